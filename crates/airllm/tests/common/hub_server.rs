//! A local stand-in for the Hugging Face Hub, serving repos in the Hub's URL layout:
//!
//! - `GET /api/models/{org}/{name}/revision/{rev}?blobs=true`: commit and siblings
//!   (size, blobId, lfs.sha256);
//! - `HEAD|GET /{org}/{name}/resolve/{rev}/{path}`: small files answered directly
//!   (ETag = git blob sha1); LFS files answered with a 302 to `/cdn/{sha256}` that
//!   carries `X-Linked-Etag`, `X-Linked-Size` and `X-Repo-Commit`, as the Hub does;
//! - `GET /cdn/{sha256}`: the bytes, with `Range: bytes=N-` support.
//!
//! Faults for tests: drop the connection half way through a file once, or serve
//! a corrupted copy. The server stops when dropped, or by itself after a deadline.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha1::Digest as _;

/// A file of a served repo.
#[derive(Clone, Debug)]
pub struct File {
    pub path: String,
    pub bytes: Vec<u8>,
    /// Stored in LFS (served through the CDN redirect, sha256 etag).
    pub lfs: bool,
}

impl File {
    pub fn sha256(&self) -> String {
        hex(&sha2::Sha256::digest(&self.bytes))
    }
    pub fn git_sha1(&self) -> String {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", self.bytes.len()).as_bytes());
        h.update(&self.bytes);
        hex(&h.finalize())
    }
    pub fn etag(&self) -> String {
        if self.lfs { self.sha256() } else { self.git_sha1() }
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Clone, Debug)]
pub struct Repo {
    pub id: String,
    pub commit: String,
    pub files: Vec<File>,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
}

#[derive(Default)]
pub struct Faults {
    /// Repo paths whose next CDN transfer is cut half way.
    pub cut_once: HashSet<String>,
    /// Repo paths served with one byte flipped.
    pub corrupt: HashSet<String>,
}

pub struct HubServer {
    pub url: String,
    pub log: Arc<Mutex<Vec<Seen>>>,
    pub faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl HubServer {
    /// Serve `repos` on 127.0.0.1 (a free port) for at most `deadline`.
    pub fn start(repos: Vec<Repo>, deadline: Duration) -> HubServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, f, s, u) = (log.clone(), faults.clone(), stop.clone(), url.clone());
        let handle = std::thread::spawn(move || {
            let end = Instant::now() + deadline;
            let repos: HashMap<String, Repo> = repos.into_iter().map(|r| (r.id.clone(), r)).collect();
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = handle(stream, &repos, &l, &f, &u);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        HubServer { url, log, faults, stop, handle: Some(handle) }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

fn respond(
    s: &mut TcpStream,
    status: &str,
    headers: &[(String, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut h = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        h += &format!("{k}: {v}\r\n");
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        h += &format!("Content-Length: {}\r\n", body.len());
    }
    h += "\r\n";
    s.write_all(h.as_bytes())?;
    if !head_only {
        s.write_all(body)?;
    }
    s.flush()
}

fn handle(
    stream: TcpStream,
    repos: &HashMap<String, Repo>,
    log: &Mutex<Vec<Seen>>,
    faults: &Mutex<Faults>,
    base: &str,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut s = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_owned()),
                "authorization" => auth = Some(v.trim().to_owned()),
                _ => {}
            }
        }
    }
    let path = target.split('?').next().unwrap_or("").to_owned();
    log.lock().unwrap().push(Seen { method: method.clone(), path: path.clone(), range: range.clone(), auth });
    let head = method == "HEAD";
    let not_found = |s: &mut TcpStream| respond(s, "404 Not Found", &[], b"{\"error\":\"not found\"}", head);
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/models/{org}/{name}/revision/{rev}
    if segs.len() == 6 && segs[0] == "api" && segs[1] == "models" && segs[4] == "revision" {
        let Some(repo) = repos.get(&format!("{}/{}", segs[2], segs[3])) else { return not_found(&mut s) };
        if segs[5] != "main" && segs[5] != repo.commit {
            return not_found(&mut s);
        }
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| {
                let mut v = serde_json::json!({"rfilename": f.path, "size": f.bytes.len(), "blobId": f.git_sha1()});
                if f.lfs {
                    v["lfs"] = serde_json::json!({"sha256": f.sha256(), "size": f.bytes.len(), "pointerSize": 134});
                }
                v
            })
            .collect();
        let body = serde_json::json!({"id": repo.id, "sha": repo.commit, "siblings": siblings}).to_string();
        return respond(&mut s, "200 OK", &[("Content-Type".into(), "application/json".into())], body.as_bytes(), head);
    }
    // /{org}/{name}/resolve/{rev}/{path...}
    if segs.len() >= 5 && segs[2] == "resolve" {
        let Some(repo) = repos.get(&format!("{}/{}", segs[0], segs[1])) else { return not_found(&mut s) };
        if segs[3] != "main" && segs[3] != repo.commit {
            return not_found(&mut s);
        }
        let file_path = segs[4..].join("/");
        let Some(f) = repo.files.iter().find(|f| f.path == file_path) else { return not_found(&mut s) };
        let mut h = vec![("X-Repo-Commit".to_owned(), repo.commit.clone())];
        if f.lfs {
            h.push(("X-Linked-Etag".into(), format!("\"{}\"", f.sha256())));
            h.push(("X-Linked-Size".into(), f.bytes.len().to_string()));
            h.push(("ETag".into(), format!("\"{}\"", f.git_sha1())));
            h.push(("Location".into(), format!("{base}/cdn/{}?file={}", f.sha256(), f.path)));
            return respond(&mut s, "302 Found", &h, b"", head);
        }
        h.push(("ETag".into(), format!("\"{}\"", f.git_sha1())));
        return respond(&mut s, "200 OK", &h, &f.bytes, head);
    }
    // /cdn/{sha256}
    if segs.len() == 2 && segs[0] == "cdn" {
        let Some(f) = repos.values().flat_map(|r| &r.files).find(|f| f.lfs && f.sha256() == segs[1]) else {
            return not_found(&mut s);
        };
        let mut bytes = f.bytes.clone();
        let (cut, corrupt) = {
            let mut fl = faults.lock().unwrap();
            (fl.cut_once.remove(&f.path), fl.corrupt.contains(&f.path))
        };
        if corrupt {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
        }
        let start = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        if start > bytes.len() {
            return respond(&mut s, "416 Range Not Satisfiable", &[], b"", head);
        }
        let body = &bytes[start..];
        let (status, mut h) = if start > 0 {
            (
                "206 Partial Content",
                vec![("Content-Range".to_owned(), format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()))],
            )
        } else {
            ("200 OK", Vec::new())
        };
        h.push(("Content-Length".into(), body.len().to_string()));
        h.push(("Accept-Ranges".into(), "bytes".into()));
        if cut {
            // Headers promise everything; half the body comes, then the connection drops.
            let mut head_text = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
            for (k, v) in &h {
                head_text += &format!("{k}: {v}\r\n");
            }
            head_text += "\r\n";
            s.write_all(head_text.as_bytes())?;
            s.write_all(&body[..body.len() / 2])?;
            s.flush()?;
            let _ = s.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
        return respond(&mut s, status, &h, body, head);
    }
    let _ = r.read(&mut [0u8; 0]);
    not_found(&mut s)
}

/// The files of a fixture directory as a repo (safetensors in LFS, the rest in git),
/// plus a PyTorch weight file a default pull must skip.
pub fn fixture_repo(id: &str, dir: &std::path::Path) -> Repo {
    let mut files: Vec<File> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let path = e.file_name().to_string_lossy().into_owned();
            File { lfs: path.ends_with(".safetensors"), bytes: std::fs::read(e.path()).unwrap(), path }
        })
        .collect();
    files.push(File { path: "pytorch_model.bin".into(), bytes: vec![7; 1000], lfs: true });
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Repo { id: id.into(), commit: "0123456789abcdef0123456789abcdef01234567".into(), files }
}
