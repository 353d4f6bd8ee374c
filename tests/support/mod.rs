//! What the integration tests share: the built binary, tools, temp dirs, free ports, trees,
//! the MariaDB fixture, the S3 test server, a stream builder. Test helpers only: nothing here
//! may hide a failure (a missing tool fails, an S3 server missing outside CI skips loudly).

pub mod s3_fault_proxy;
pub mod s3env;
