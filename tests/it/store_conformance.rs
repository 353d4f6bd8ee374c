//! One conformance suite for every repository backend: the local directory and S3 (against the
//! real S3-compatible server `scripts/test` starts). Both must behave the same for everything
//! upload, restore, list and prune rely on.

use crate::support::{s3env, xb};

use std::sync::Arc;

use bytes::Bytes;
use xbagent::store::local::LocalRepo;
use xbagent::store::s3::S3Repo;
use xbagent::store::{PartBody, Repository, StoreError};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn keys(repo: &dyn Repository, prefix: &str) -> Vec<String> {
    repo.list(prefix)
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// Everything the backup commands need from a backend.
fn conformance(repo: Arc<dyn Repository>) {
    let r = &*repo;
    // Small objects: put, get, size, overwrite.
    assert!(keys(r, "").is_empty(), "a fresh repository is empty");
    r.put("a/x.json", Bytes::from_static(b"{\"v\":1}")).unwrap();
    assert_eq!(&r.get("a/x.json", 1024).unwrap()[..], b"{\"v\":1}");
    assert_eq!(r.size("a/x.json").unwrap(), Some(7));
    r.put("a/x.json", Bytes::from_static(b"{\"v\":22}"))
        .unwrap();
    assert_eq!(&r.get("a/x.json", 1024).unwrap()[..], b"{\"v\":22}");
    // A size cap is enforced, not ignored.
    assert!(r.get("a/x.json", 3).is_err(), "get above max must fail");
    // Missing objects.
    assert!(matches!(
        r.get("a/missing", 10),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(r.size("a/missing").unwrap(), None);
    r.delete("a/missing")
        .expect("deleting a missing object is not an error");
    // Empty objects.
    r.put("a/empty", Bytes::new()).unwrap();
    assert_eq!(r.size("a/empty").unwrap(), Some(0));
    assert!(r.get("a/empty", 10).unwrap().is_empty());

    // Listing: by prefix, in key order, with sizes.
    r.put("b/2", Bytes::from_static(b"22")).unwrap();
    r.put("b/1", Bytes::from_static(b"1")).unwrap();
    r.put("bb/1", Bytes::from_static(b"1")).unwrap();
    assert_eq!(keys(r, "b/"), vec!["b/1", "b/2"]);
    assert_eq!(
        keys(r, ""),
        vec!["a/empty", "a/x.json", "b/1", "b/2", "bb/1"]
    );
    let listed = r.list("b/").unwrap();
    assert_eq!(listed[1].size, 2);

    // Multipart: parts out of order, from several threads, memory and spooled bodies; nothing
    // visible before completion; ranged reads of the result.
    let p1 = pattern(6 * MIB, 1);
    let p2 = pattern(6 * MIB, 2);
    let p3 = pattern(MIB + 17, 3);
    let whole: Vec<u8> = [p1.clone(), p2.clone(), p3.clone()].concat();
    let up: Arc<dyn xbagent::store::Upload> = Arc::from(r.start_upload("c/stream").unwrap());
    let spool = {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, &p2).unwrap();
        f
    };
    let bodies = vec![
        (
            3u32,
            (12 * MIB) as u64,
            PartBody::Memory(Bytes::from(p3.clone())),
        ),
        (
            2,
            (6 * MIB) as u64,
            PartBody::Spooled {
                file: spool,
                len: p2.len() as u64,
            },
        ),
        (1, 0, PartBody::Memory(Bytes::from(p1.clone()))),
    ];
    let handles: Vec<_> = bodies
        .into_iter()
        .map(|(n, off, body)| {
            let up = up.clone();
            std::thread::spawn(move || up.put_part(n, off, &body).unwrap())
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        r.size("c/stream").unwrap(),
        None,
        "visible before completion"
    );
    assert!(!keys(r, "c/").contains(&"c/stream".to_string()));
    up.complete(3, whole.len() as u64).unwrap();
    assert_eq!(r.size("c/stream").unwrap(), Some(whole.len() as u64));
    assert_eq!(
        &r.get_range("c/stream", 0, whole.len() as u64).unwrap()[..],
        &whole[..]
    );
    let mid = r.get_range("c/stream", 6 * MIB as u64 - 5, 10).unwrap();
    assert_eq!(&mid[..], &whole[6 * MIB - 5..6 * MIB + 5]);
    let tail = r.get_range("c/stream", whole.len() as u64 - 3, 3).unwrap();
    assert_eq!(&tail[..], &whole[whole.len() - 3..]);
    assert!(r.get_range("c/missing", 0, 1).is_err());

    // An aborted upload leaves nothing.
    let up = r.start_upload("d/stream").unwrap();
    up.put_part(1, 0, &PartBody::Memory(Bytes::from(p1.clone())))
        .unwrap();
    up.abort().unwrap();
    assert_eq!(r.size("d/stream").unwrap(), None);
    assert!(keys(r, "d/").is_empty(), "{:?}", keys(r, "d/"));

    // A single small part (the last part may be small; an empty stream still has one part).
    let up = r.start_upload("e/stream").unwrap();
    up.put_part(1, 0, &PartBody::Memory(Bytes::from_static(b"tiny")))
        .unwrap();
    up.complete(1, 4).unwrap();
    assert_eq!(&r.get("e/stream", 10).unwrap()[..], b"tiny");

    // Completing with a part missing is refused.
    let up = r.start_upload("f/stream").unwrap();
    up.put_part(1, 0, &PartBody::Memory(Bytes::from(p1.clone())))
        .unwrap();
    assert!(up.complete(2, (12 * MIB) as u64).is_err());
    let _ = up.abort();
    assert_eq!(r.size("f/stream").unwrap(), None);

    // Deletion.
    r.delete("b/1").unwrap();
    assert_eq!(keys(r, "b/"), vec!["b/2"]);
    for k in keys(r, "") {
        r.delete(&k).unwrap();
    }
    assert!(keys(r, "").is_empty());
}

#[test]
fn local_directory_backend() {
    let dir = tempfile::tempdir().unwrap();
    conformance(Arc::new(LocalRepo::open(&dir.path().join("repo")).unwrap()));
}

#[test]
fn local_backend_refuses_keys_that_leave_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let repo = LocalRepo::open(&dir.path().join("repo")).unwrap();
    for k in ["../x", "/etc/x", "a/../../x", "a//b", ""] {
        assert!(repo.put(k, Bytes::from_static(b"x")).is_err(), "{k}");
    }
    assert!(!dir.path().join("x").exists());
}

#[test]
fn s3_backend() {
    let Some(env) = s3env::s3_env() else { return };
    let bucket = env.new_bucket("conf");
    let repo = S3Repo::open(&bucket, "some/prefix", &env.settings(&env.endpoint)).unwrap();
    conformance(Arc::new(repo));
}

#[test]
fn s3_backend_without_prefix() {
    let Some(env) = s3env::s3_env() else { return };
    let bucket = env.new_bucket("conf-root");
    let repo = S3Repo::open(&bucket, "", &env.settings(&env.endpoint)).unwrap();
    conformance(Arc::new(repo));
}

#[test]
fn s3_prefixes_do_not_see_each_other() {
    let Some(env) = s3env::s3_env() else { return };
    let bucket = env.new_bucket("conf-prefix");
    let a = S3Repo::open(&bucket, "a", &env.settings(&env.endpoint)).unwrap();
    let ab = S3Repo::open(&bucket, "ab", &env.settings(&env.endpoint)).unwrap();
    a.put("k", Bytes::from_static(b"1")).unwrap();
    ab.put("k", Bytes::from_static(b"2")).unwrap();
    assert_eq!(keys(&a, ""), vec!["k"]);
    assert_eq!(&ab.get("k", 10).unwrap()[..], b"2");
}

#[test]
fn s3_wrong_credentials_fail_clearly() {
    let Some(env) = s3env::s3_env() else { return };
    let bucket = env.new_bucket("conf-creds");
    let out = env
        .xbagent(&["backups", "list", &format!("s3://{bucket}/p")])
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-key-000000")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("ListObjectsV2"), "{err}");
}

/// Credentials from a named profile (the standard chain's second link), with none in the
/// environment: the operator's `~/.aws/credentials` works as it does for the aws CLI.
#[test]
fn s3_credentials_from_a_profile() {
    let Some(env) = s3env::s3_env() else { return };
    let bucket = env.new_bucket("conf-profile");
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[xbtest]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            env.access_key, env.secret_key
        ),
    )
    .unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!("[profile xbtest]\nregion = {}\n", env.region),
    )
    .unwrap();
    let run = |profile: &str| {
        let repo = format!("s3://{bucket}/p");
        xb(&["backups", "list", &repo, "--endpoint", &env.endpoint])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_ENDPOINT_URL")
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_PROFILE", profile)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap()
    };
    let out = run("xbtest");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "profile credentials refused: {err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 backup(s)"));
    // A profile that does not exist: no credentials, a clear failure at once (not retried).
    let t = std::time::Instant::now();
    let out = run("nosuchprofile");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("no credentials"), "{err}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        t.elapsed()
    );
}
