//! The bearer-token flow against a minimal in-test registry and token
//! service (std only, loopback): a 401 with `WWW-Authenticate: Bearer
//! realm,service,scope` is answered by fetching a token from the realm with
//! the basic credentials, then retrying with `Authorization: Bearer`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use registry::{Client, ClientOptions, Credentials, Error};

/// Serves until the test ends; records every request line with its
/// Authorization header.
fn serve(log: Arc<Mutex<Vec<String>>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut auth = String::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h
                    .strip_prefix("Authorization: ")
                    .or(h.strip_prefix("authorization: "))
                {
                    auth = v.trim().to_string();
                }
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(format!("{path} [{auth}]"));
            // base64("cairn:s3cret")
            let (status, extra, body) = if path.starts_with("/token?") {
                if auth == "Basic Y2Fpcm46czNjcmV0" {
                    ("200 OK", String::new(), r#"{"token":"tok-1"}"#.to_string())
                } else {
                    ("401 Unauthorized", String::new(), "{}".to_string())
                }
            } else if auth == "Bearer tok-1" {
                (
                    "200 OK",
                    "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".to_string(),
                    r#"{"schemaVersion":2}"#.to_string(),
                )
            } else {
                (
                    "401 Unauthorized",
                    format!("WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake registry\",scope=\"repository:cairn:pull\"\r\n"),
                    "{}".to_string(),
                )
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn client(port: u16, credentials: Option<Credentials>) -> Client {
    Client::new(
        &format!("127.0.0.1:{port}"),
        &ClientOptions {
            plain_http: true,
            credentials,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn bearer_challenge_is_answered_with_a_token_from_the_realm() {
    std::env::set_var("DOCKER_CONFIG", "/nonexistent/cairn-test");
    let log = Arc::new(Mutex::new(Vec::new()));
    let port = serve(log.clone());
    let c = client(
        port,
        Some(Credentials {
            username: "cairn".into(),
            password: "s3cret".into(),
        }),
    );
    let m = c
        .get_manifest(
            "cairn",
            "1.0.0",
            &["application/vnd.oci.image.manifest.v1+json"],
            1 << 20,
        )
        .unwrap();
    assert_eq!(m.bytes, br#"{"schemaVersion":2}"#);
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        [
            "/v2/cairn/manifests/1.0.0 []".to_string(),
            "/token?service=fake%20registry&scope=repository%3Acairn%3Apull [Basic Y2Fpcm46czNjcmV0]".to_string(),
            "/v2/cairn/manifests/1.0.0 [Bearer tok-1]".to_string(),
        ]
    );
}

#[test]
fn a_token_realm_refusing_us_is_a_named_401() {
    std::env::set_var("DOCKER_CONFIG", "/nonexistent/cairn-test");
    let log = Arc::new(Mutex::new(Vec::new()));
    let port = serve(log);
    let e = client(port, None)
        .get_manifest("cairn", "1.0.0", &["application/json"], 1 << 20)
        .unwrap_err();
    assert!(matches!(e, Error::Denied { status: 401, .. }), "{e}");
    let t = e.to_string();
    assert!(
        t.contains(&format!("registry 127.0.0.1:{port}: manifest 1.0.0 in cairn: access denied (HTTP 401) by token realm http://127.0.0.1:{port}/token")),
        "{t}"
    );
}
