//! Volumes across machines in broker mode (README "Volume"): each machine keeps a volume in a
//! directory of its own, and `commit` / `reload` sync that directory with the volume's JetStream
//! object store (`berth_volume__<name>`, an object per file, named by its path in the volume).
//! What was last synced is kept beside it (the `manifest`: each file's object version, size and
//! modification time then), so that each side's changes since are told apart:
//! - `commit` uploads the files changed here since (another machine's commit of the same file in
//!   between is replaced: the last commit wins, file by file) and removes the objects of files
//!   removed here; files other machines added stay.
//! - `reload` downloads the objects changed since (a local change to the same file not committed
//!   is replaced), removes here the files whose objects were removed, and keeps files added here
//!   and not committed yet.
//!
//! The manifest also names the store it was synced with (its stream's creation time), so that a
//! volume deleted elsewhere (`Volume.delete`, `berth volume delete`) is not made again by a
//! machine that still has a copy: its next sync finds the store gone and fails with
//! [`ErrorKind::NotFound`] (its copy stays as it was), and a store deleted and made again since
//! is a new volume, to which the files this machine had synced with the old one do not belong
//! (they are removed here unless changed since; what changed stays, as anything added here).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use async_nats::jetstream::{self, object_store};
use futures_util::StreamExt as _;

use crate::broker::{is_not_found, Broker};
use crate::error::{Error, ErrorKind};

/// A volume's object store: `berth_volume__` and its name, escaped (bucket names allow
/// `[A-Za-z0-9_-]`).
pub fn volume_bucket(name: &str) -> String {
    format!("berth_volume__{}", berth_core::broker::escape(name))
}

/// One file as last synced: its object's version, and its size and modification time here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Synced {
    nuid: String,
    size: u64,
    mtime: u128,
}

/// What a sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Files sent (commit) or fetched (reload).
    pub copied: u32,
    /// Objects (commit) or files (reload) removed.
    pub removed: u32,
}

/// What a machine last synced of a volume: the store it synced with (None before the first
/// sync, or in a manifest written before stores were named), and each file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Manifest {
    store: Option<i128>,
    files: HashMap<String, Synced>,
}

/// The manifest's line naming its store (`store<TAB>creation time in ns`); a file's line has
/// four fields.
const STORE_LINE: &str = "store\t";

fn read_manifest(path: &Path) -> Manifest {
    let Ok(text) = std::fs::read_to_string(path) else { return Manifest::default() };
    let store = text.lines().find_map(|l| l.strip_prefix(STORE_LINE)?.parse().ok());
    let files = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, '\t');
            let (nuid, size, mtime, name) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((
                name.to_owned(),
                Synced { nuid: nuid.to_owned(), size: size.parse().ok()?, mtime: mtime.parse().ok()? },
            ))
        })
        .collect();
    Manifest { store, files }
}

fn write_manifest(path: &Path, m: &Manifest) -> std::io::Result<()> {
    let mut names: Vec<&String> = m.files.keys().collect();
    names.sort();
    let mut text = String::new();
    if let Some(store) = m.store {
        text.push_str(&format!("{STORE_LINE}{store}\n"));
    }
    for n in names {
        let s = &m.files[n];
        text.push_str(&format!("{}\t{}\t{}\t{n}\n", s.nuid, s.size, s.mtime));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, path)
}

/// Size and modification time of a file.
fn stat(path: &Path) -> Option<(u64, u128)> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m.modified().ok()?.duration_since(UNIX_EPOCH).ok()?.as_nanos();
    Some((m.len(), mtime))
}

/// Every regular file under `dir`, by its path in the volume (`/`-separated). Names with a tab
/// or a line break are left out (the manifest's separators).
fn local_files(dir: &Path) -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    let mut todo = vec![(dir.to_path_buf(), String::new())];
    while let Some((at, prefix)) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else { continue };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let Some(name) = e.file_name().to_str().map(str::to_owned) else { continue };
            if name.contains(['\t', '\n', '\r']) {
                continue;
            }
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            if kind.is_dir() {
                todo.push((e.path(), rel));
            } else if kind.is_file() {
                out.insert(rel, e.path());
            }
        }
    }
    out
}

/// Volume `name`'s store is gone though this machine synced with it: deleted elsewhere (or
/// lost by the NATS server). Its copy in `dir` stays as it was. src/data/volume.ts tells this
/// error by its words "was deleted on the NATS server" (a NotFoundError there): keep them.
fn deleted(name: &str, dir: &Path) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!(
            "volume '{name}' was deleted on the NATS server (Volume.delete or `berth volume delete` on another \
             machine) after this machine last synced it; its copy here ({}) is kept as it was: \
             Volume.delete('{name}') removes it here too; once the volume is made again (a commit from a \
             machine that has no copy of the old one), this machine's next sync takes the new one; removing \
             BERTH_VOLUMES_DIR/.sync/{} instead makes this copy the new volume at its next commit",
            dir.display(),
            name
        ),
    )
}

/// How a failed step (`what`) of a sync of volume `name` reads.
fn sync_failed(name: &str) -> impl Fn(&str, &dyn std::fmt::Display) -> Error + '_ {
    move |what, e| Error::request(format!("{what} (volume {name})"), e)
}

impl Broker {
    /// Volume `name`'s object store and its identity (its stream's creation time, in ns). A
    /// store this machine never synced with (`known` None) is made when missing; one it did sync
    /// with and that is gone was deleted: [`ErrorKind::NotFound`], naming the fixes.
    async fn volume_store(
        &self,
        name: &str,
        dir: &Path,
        known: Option<i128>,
    ) -> Result<(object_store::ObjectStore, i128), Error> {
        let js = jetstream::new(self.client().clone());
        let bucket = volume_bucket(name);
        let opening = |e: &dyn std::fmt::Display| Error::request(format!("opening {bucket}"), e);
        let (stream, store) = match js.get_stream(format!("OBJ_{bucket}")).await {
            Ok(stream) => (stream, js.get_object_store(&bucket).await.map_err(|e| opening(&e))?),
            Err(e) if is_not_found(&e) && known.is_some() => return Err(deleted(name, dir)),
            Err(e) if is_not_found(&e) => {
                let config = object_store::Config {
                    bucket: bucket.clone(),
                    description: Some(format!("berth volume {name}")),
                    ..Default::default()
                };
                let store = js
                    .create_object_store(config)
                    .await
                    .map_err(|e| Error::request(format!("creating volume store {bucket}"), e))?;
                (js.get_stream(format!("OBJ_{bucket}")).await.map_err(|e| opening(&e))?, store)
            }
            Err(e) => return Err(opening(&e)),
        };
        Ok((store, stream.cached_info().created.unix_timestamp_nanos()))
    }

    /// The manifest at `manifest` and volume `name`'s store, checked against each other: a store
    /// made again since the last sync is a new volume, and the files synced with the old one
    /// are removed here unless changed since (module docs).
    async fn synced_store(
        &self,
        name: &str,
        dir: &Path,
        manifest: &Path,
    ) -> Result<(object_store::ObjectStore, Manifest), Error> {
        let mut m = read_manifest(manifest);
        let (store, id) = self.volume_store(name, dir, m.store).await?;
        if m.store.is_some_and(|known| known != id) {
            for (rel, s) in std::mem::take(&mut m.files) {
                let path = dir.join(&rel);
                if stat(&path).is_some_and(|(size, mtime)| size == s.size && mtime == s.mtime) {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        m.store = Some(id);
        Ok((store, m))
    }

    /// The names of the volumes that have an object store on this server (from each store's
    /// description, which names its volume unescaped), sorted.
    pub async fn volume_names(&self) -> Result<Vec<String>, Error> {
        let js = jetstream::new(self.client().clone());
        let mut streams = js.streams();
        let mut names = Vec::new();
        while let Some(info) = streams.next().await {
            let info = info.map_err(|e| Error::request("listing volume stores", e))?;
            if !info.config.name.starts_with("OBJ_berth_volume__") {
                continue;
            }
            if let Some(name) = info.config.description.as_deref().and_then(|d| d.strip_prefix("berth volume ")) {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes volume `name`'s object store; false when there was none.
    pub async fn drop_volume(&self, name: &str) -> Result<bool, Error> {
        let js = jetstream::new(self.client().clone());
        match js.delete_object_store(volume_bucket(name)).await {
            Ok(()) => Ok(true),
            Err(e) if e.to_string().contains("not found") => Ok(false),
            Err(e) => Err(Error::request(format!("removing volume {name}"), e)),
        }
    }

    /// Sends what changed in `dir` since the last sync to volume `name`'s object store
    /// (module docs), and records what is synced now in `manifest`.
    pub async fn commit_volume(&self, name: &str, dir: &Path, manifest: &Path) -> Result<SyncReport, Error> {
        let (store, mut m) = self.synced_store(name, dir, manifest).await?;
        let failed = sync_failed(name);
        let synced = &mut m.files;
        let mut report = SyncReport::default();
        let here = local_files(dir);
        for (rel, path) in &here {
            let Some((size, mtime)) = stat(path) else { continue };
            if synced.get(rel).is_some_and(|s| s.size == size && s.mtime == mtime) {
                continue;
            }
            let mut file = tokio::fs::File::open(path).await.map_err(|e| failed(&format!("reading {rel}"), &e))?;
            let info = store.put(rel.as_str(), &mut file).await.map_err(|e| failed(&format!("sending {rel}"), &e))?;
            synced.insert(rel.clone(), Synced { nuid: info.nuid, size, mtime });
            report.copied += 1;
        }
        let gone: Vec<String> = synced.keys().filter(|k| !here.contains_key(*k)).cloned().collect();
        for rel in gone {
            match store.delete(&rel).await {
                Ok(()) => report.removed += 1,
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(failed(&format!("removing {rel}"), &e)),
            }
            synced.remove(&rel);
        }
        write_manifest(manifest, &m).map_err(|e| failed("recording the sync", &e))?;
        Ok(report)
    }

    /// Brings into `dir` what changed in volume `name`'s object store since the last sync
    /// (module docs), and records what is synced now in `manifest`.
    pub async fn reload_volume(&self, name: &str, dir: &Path, manifest: &Path) -> Result<SyncReport, Error> {
        let (store, mut m) = self.synced_store(name, dir, manifest).await?;
        let failed = sync_failed(name);
        let synced = &mut m.files;
        let mut report = SyncReport::default();
        let mut remote: HashMap<String, String> = HashMap::new();
        let mut list = store.list().await.map_err(|e| failed("listing", &e))?;
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| failed("listing", &e))?;
            remote.insert(info.name, info.nuid);
        }
        for (rel, nuid) in &remote {
            if synced.get(rel).is_some_and(|s| &s.nuid == nuid) {
                continue;
            }
            // No way out of the volume: the object names come from other machines' commits.
            if rel.split('/').any(|p| p.is_empty() || p == "." || p == "..") || rel.starts_with('/') {
                tracing::warn!(volume = name, object = %rel, "a volume object whose name is not a path inside it; skipped");
                continue;
            }
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| failed(&format!("writing {rel}"), &e))?;
            }
            let tmp = path
                .with_file_name(format!(".{}.berth-sync", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
            let mut object = store.get(rel).await.map_err(|e| failed(&format!("fetching {rel}"), &e))?;
            let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| failed(&format!("writing {rel}"), &e))?;
            tokio::io::copy(&mut object, &mut file).await.map_err(|e| failed(&format!("fetching {rel}"), &e))?;
            file.sync_all().await.map_err(|e| failed(&format!("writing {rel}"), &e))?;
            drop(file);
            tokio::fs::rename(&tmp, &path).await.map_err(|e| failed(&format!("writing {rel}"), &e))?;
            let (size, mtime) = stat(&path).unwrap_or_default();
            synced.insert(rel.clone(), Synced { nuid: nuid.clone(), size, mtime });
            report.copied += 1;
        }
        let gone: Vec<String> = synced.keys().filter(|k| !remote.contains_key(*k)).cloned().collect();
        for rel in gone {
            let path = dir.join(&rel);
            let s = &synced[&rel];
            // Removed elsewhere; a file changed here since the last sync stays (commit sends it).
            if stat(&path).is_none_or(|(size, mtime)| size == s.size && mtime == s.mtime) {
                if std::fs::remove_file(&path).is_ok() {
                    report.removed += 1;
                }
                synced.remove(&rel);
            }
        }
        write_manifest(manifest, &m).map_err(|e| failed("recording the sync", &e))?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_manifest_reads_back_what_was_written() {
        let dir = std::env::temp_dir().join(format!("berth-manifest-{}", std::process::id()));
        let path = dir.join("v.sync");
        let mut m = Manifest { store: Some(1_764_000_000_123_456_789), files: HashMap::new() };
        m.files.insert("a/b c.txt".to_owned(), Synced { nuid: "N1".into(), size: 3, mtime: 17 });
        m.files.insert("top".to_owned(), Synced { nuid: "N2".into(), size: 0, mtime: 1 });
        write_manifest(&path, &m).unwrap();
        assert_eq!(read_manifest(&path), m);
        // One written before stores were named reads as synced with an unknown store.
        m.store = None;
        write_manifest(&path, &m).unwrap();
        assert_eq!(read_manifest(&path), m);
        assert_eq!(read_manifest(&dir.join("none")), Manifest::default());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bucket_names_keep_to_the_allowed_characters() {
        assert_eq!(volume_bucket("models"), "berth_volume__models");
        assert!(volume_bucket("my.models v2").chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }
}
