//! `keel fetch`'s download path against a local HTTP server: a verified file lands whole, a
//! wrong checksum keeps nothing, and no network gives a message that points at --weights.
//! No test touches the real network.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

use keel::io::fetch::{download_verified, md5_file};

/// Serve `body` for every request on a loopback port, `count` times; returns the base URL.
fn serve(body: Vec<u8>, count: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    url
}

/// Deterministic, non-constant bytes.
fn payload() -> Vec<u8> {
    (0..100_003u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[test]
fn verified_download_lands_whole_and_bad_checksum_keeps_nothing() {
    let dir = common::temp_dir("fetch");
    let src = dir.join("src.bin");
    std::fs::write(&src, payload()).unwrap();
    let md5 = md5_file(&src).unwrap();

    let url = serve(payload(), 2);
    let dest = dir.join("cache/weights/file.h5");
    download_verified(&format!("{url}/file.h5"), &dest, &md5, false, "").unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload());

    let other = dir.join("cache/weights/other.h5");
    let err = download_verified(
        &format!("{url}/file.h5"),
        &other,
        "00000000000000000000000000000000",
        false,
        "",
    )
    .unwrap_err();
    assert!(err.to_string().contains("md5"), "{err}");
    assert!(!other.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("cache/weights"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "only the verified file may remain: {leftovers:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A port nothing listens on: connection refused, as on a machine without network.
fn refused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn cli_fetch_without_network_names_weights_flag() {
    let dir = common::temp_dir("fetch-offline");
    let port = refused_port();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["fetch", "vgg16"])
        .env("KEEL_HOME", &dir)
        .env("KEEL_WEIGHTS_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--weights"), "{stderr}");
    assert!(
        stderr.contains("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !dir.join("weights/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
            .exists()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A file placed at the cache path whose md5 is not Keras's: offline, the message names it,
/// both checksums and `--weights` (it used to ask for the file to be put where it already was).
#[test]
fn offline_fetch_names_a_cached_file_with_another_checksum() {
    let dir = common::temp_dir("fetch-foreign");
    let cached = dir.join("weights/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5");
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, b"not keras's file").unwrap();
    let port = refused_port();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["fetch", "vgg16"])
        .env("KEEL_HOME", &dir)
        .env("KEEL_WEIGHTS_URL", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let md5 = keel::io::fetch::md5_file(&cached).unwrap();
    for needle in [
        cached.to_str().unwrap(),
        md5.as_str(),
        "6d6bbae143d832006294945121d1f1fc",
        &format!("--weights {}", cached.display()),
    ] {
        assert!(stderr.contains(needle), "expected {needle} in: {stderr}");
    }
    assert!(!stderr.contains("place it at"), "{stderr}");
    assert!(cached.exists(), "the user's file is left alone");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn cli_fetch_refuses_a_file_with_the_wrong_checksum() {
    let dir = common::temp_dir("fetch-badsum");
    let url = serve(payload(), 1);
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["fetch", "vgg19", "--top"])
        .env("KEEL_HOME", &dir)
        .env("KEEL_WEIGHTS_URL", &url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cbe5617147190e668d6c5d5026f83318"),
        "{stderr}"
    );
    let weights = dir.join("weights");
    assert_eq!(
        std::fs::read_dir(&weights).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing may be kept"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
