//! The Hub's HTTP API, as much of it as a download needs.

use std::time::Duration;

use serde::Deserialize;

use super::{HubConfig, HubError, Result};

/// `GET /api/models/{repo}/revision/{rev}?blobs=true`.
#[derive(Debug, Deserialize)]
pub struct RepoInfo {
    /// The commit the revision points at.
    pub sha: String,
    /// Every file of the repo at that commit.
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

/// One file in [`RepoInfo`].
#[derive(Debug, Deserialize)]
pub struct Sibling {
    /// Path in the repo.
    pub rfilename: String,
    /// Size in bytes (with `blobs=true`).
    pub size: Option<u64>,
    /// Git blob id (sha1) of the file as stored in git (the LFS pointer for LFS files).
    #[serde(rename = "blobId")]
    pub blob_id: Option<String>,
    /// LFS metadata of large files.
    pub lfs: Option<Lfs>,
}

/// LFS metadata: the real content's sha256 and size.
#[derive(Debug, Deserialize)]
pub struct Lfs {
    /// sha256 of the content (hex).
    pub sha256: Option<String>,
    /// Also spelled `oid` by the tree API.
    pub oid: Option<String>,
    /// Content size.
    pub size: Option<u64>,
}

/// How a file's content is verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Digest {
    /// sha256 of the content (LFS files).
    Sha256(String),
    /// git's blob sha1 (`sha1("blob {len}\0" + content)`, small files kept in git).
    GitSha1(String),
}

impl Digest {
    pub fn label(&self) -> String {
        match self {
            Digest::Sha256(h) => format!("sha256:{h}"),
            Digest::GitSha1(h) => format!("sha1:{h}"),
        }
    }
}

/// What a download needs to know about one file.
#[derive(Clone, Debug)]
pub struct FileMeta {
    /// Path in the repo.
    pub path: String,
    /// The URL to GET.
    pub url: String,
    /// Blob name in the cache (the Hub's etag).
    pub etag: String,
    /// Content size.
    pub size: u64,
    /// What the content must hash to.
    pub digest: Digest,
}

pub struct Client {
    agent: ureq::Agent,
    endpoint: String,
    token: Option<String>,
}

/// Percent-encode one path segment (RFC 3986 unreserved characters stay).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encode a repo path, keeping its slashes.
fn encode_path(p: &str) -> String {
    p.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An etag without quotes or the weak marker.
fn clean_etag(v: &str) -> String {
    v.trim().trim_start_matches("W/").trim_matches('"').to_owned()
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// What an error status means for a repo request.
fn status_hint(status: u16, repo: &str) -> String {
    match status {
        401 | 403 => format!(
            "{repo} is gated or private, or the token is not allowed to read it: accept its terms on the Hub and \
             set HF_TOKEN (or run `huggingface-cli login`)"
        ),
        404 => format!(
            "no repo {repo} or no such revision or file (check the spelling; gated repos also answer 404 without a token)"
        ),
        429 => "rate limited; wait a little and pull again (the partial file is kept)".into(),
        s if s >= 500 => "the Hub had an error; pull again later (the partial file is kept)".into(),
        _ => "unexpected status".into(),
    }
}

impl Client {
    pub fn new(cfg: &HubConfig) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled transfer errors after this and is resumed.
            .timeout_recv_body(None)
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(format!("airllm/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client { agent, endpoint: cfg.endpoint.clone(), token: cfg.token.clone() }
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    /// The commit and file list of `repo` at `revision`.
    pub fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo> {
        let url = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            self.endpoint,
            encode_path(repo),
            encode_segment(revision)
        );
        let mut resp = self
            .auth(self.agent.get(&url))
            .call()
            .map_err(|e| HubError::Transport { url: url.clone(), message: e.to_string() })?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(HubError::Status { url, status, hint: status_hint(status, repo) });
        }
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| HubError::Transport { url: url.clone(), message: e.to_string() })?;
        let info: RepoInfo = serde_json::from_str(&text)
            .map_err(|e| HubError::Protocol { url: url.clone(), message: format!("not the repo JSON: {e}") })?;
        if !is_hex(&info.sha, 40) {
            return Err(HubError::Protocol { url, message: format!("commit {:?} is not a 40-digit hash", info.sha) });
        }
        Ok(info)
    }

    /// Etag, size and digest of one file at `commit` (HEAD, redirects not followed,
    /// so the LFS headers of the Hub's own answer are seen).
    pub fn file_meta(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        sibling: Option<&super::api::Sibling>,
    ) -> Result<FileMeta> {
        let url = format!("{}/{}/resolve/{}/{}", self.endpoint, encode_path(repo), commit, encode_path(path));
        let mut target = url.clone();
        let resp = loop {
            let resp = self
                .auth(self.agent.head(&target))
                .config()
                .max_redirects(0)
                .build()
                .call()
                .map_err(|e| HubError::Transport { url: target.clone(), message: e.to_string() })?;
            let status = resp.status().as_u16();
            // A relative redirect is a renamed repo: follow it; an absolute one is the CDN.
            match header(&resp, "location") {
                Some(loc)
                    if (300..400).contains(&status)
                        && loc.starts_with('/')
                        && header(&resp, "x-linked-etag").is_none() =>
                {
                    target = format!("{}{loc}", self.endpoint);
                }
                _ => break resp,
            }
        };
        let status = resp.status().as_u16();
        if !(200..400).contains(&status) {
            return Err(HubError::Status { url, status, hint: status_hint(status, repo) });
        }
        let linked = header(&resp, "x-linked-etag");
        let etag = linked.clone().or_else(|| header(&resp, "etag")).map(|e| clean_etag(&e)).ok_or_else(|| {
            HubError::Protocol { url: url.clone(), message: "no ETag header (is HF_ENDPOINT a Hub?)".into() }
        })?;
        if let Some(c) = header(&resp, "x-repo-commit") {
            if c != commit {
                return Err(HubError::Protocol {
                    url,
                    message: format!("file served from commit {c}, expected {commit}; pull again"),
                });
            }
        }
        let size = header(&resp, "x-linked-size")
            .or_else(|| header(&resp, "content-length"))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .or(sibling.and_then(|s| s.lfs.as_ref().and_then(|l| l.size).or(s.size)))
            .ok_or_else(|| HubError::Protocol {
                url: url.clone(),
                message: "no file size (X-Linked-Size / Content-Length)".into(),
            })?;
        let lfs_sha = sibling.and_then(|s| s.lfs.as_ref()).and_then(|l| l.sha256.clone().or_else(|| l.oid.clone()));
        let digest = if is_hex(&etag, 64) {
            if let Some(api) = &lfs_sha {
                if !api.eq_ignore_ascii_case(&etag) {
                    return Err(HubError::Protocol {
                        url,
                        message: format!("the API says sha256 {api} but the file's etag is {etag}"),
                    });
                }
            }
            Digest::Sha256(etag.to_ascii_lowercase())
        } else if let Some(api) = lfs_sha.filter(|h| is_hex(h, 64)) {
            Digest::Sha256(api.to_ascii_lowercase())
        } else if linked.is_none() && is_hex(&etag, 40) {
            Digest::GitSha1(etag.to_ascii_lowercase())
        } else if let Some(b) = sibling
            .and_then(|s| s.blob_id.clone())
            .filter(|b| is_hex(b, 40) && sibling.is_some_and(|s| s.lfs.is_none()))
        {
            Digest::GitSha1(b.to_ascii_lowercase())
        } else {
            return Err(HubError::Protocol {
                url,
                message: format!(
                    "etag {etag:?} is neither a sha256 nor a git sha1 and the API gave no checksum, so the file cannot be verified"
                ),
            });
        };
        Ok(FileMeta { path: path.to_owned(), url, etag, size, digest })
    }

    /// Start a GET of `meta.url` from byte `from` (redirects followed; the token is
    /// not sent to another host). Returns (status, first byte of the body, body reader).
    pub fn get_from(&self, meta: &FileMeta, from: u64) -> Result<(u16, u64, ureq::Body)> {
        let mut req = self.auth(self.agent.get(&meta.url));
        if from > 0 {
            req = req.header("Range", format!("bytes={from}-"));
        }
        let resp = req.call().map_err(|e| HubError::Transport { url: meta.url.clone(), message: e.to_string() })?;
        let status = resp.status().as_u16();
        let start = match status {
            200 => 0,
            206 => {
                // Content-Range: bytes START-END/TOTAL
                let cr = header(&resp, "content-range").unwrap_or_default();
                cr.trim()
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| HubError::Protocol {
                    url: meta.url.clone(),
                    message: format!("bad Content-Range {cr:?}"),
                })?
            }
            s => return Err(HubError::Status { url: meta.url.clone(), status: s, hint: status_hint(s, &meta.path) }),
        };
        Ok((status, start, resp.into_body()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_encoded_and_etags_cleaned() {
        assert_eq!(encode_path("a b/c+d.json"), "a%20b/c%2Bd.json");
        assert_eq!(encode_segment("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(clean_etag("W/\"abc\""), "abc");
        assert!(is_hex(&"a".repeat(64), 64) && !is_hex("xyz", 3));
    }
}
