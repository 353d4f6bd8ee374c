//! The two kinds of repository the store tests run against, and the macro that runs each
//! scenario on both.

/// A local directory or the S3 test server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Local,
    S3,
}

/// Each scenario `fn NAME(kind: Kind)` runs once per backend, as `NAME::local` and `NAME::s3`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn local() {
                super::$name($crate::support::backends::Kind::Local);
            }

            #[test]
            fn s3() {
                super::$name($crate::support::backends::Kind::S3);
            }
        }
    )*};
}

pub(crate) use on_both_backends;
