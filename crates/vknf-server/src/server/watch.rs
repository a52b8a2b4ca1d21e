//! Polling a manifest directory: reload when its files change and have stopped changing.
//!
//! Polling (rather than inotify) works the same on every filesystem, including the symlink
//! swaps Kubernetes uses for mounted ConfigMaps, and a change is applied only once two polls in
//! a row see the same files, so a half-written file set is not loaded.

use std::path::PathBuf;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use super::{Inner, Server};
use vknf_manifest::{ParseOptions, Placement, load_dir, manifest_files};

/// A manifest directory to serve from.
#[derive(Debug, Clone)]
pub struct DirectorySource {
    /// The directory.
    pub dir: PathBuf,
    /// Which functions this host serves.
    pub placement: Placement,
    /// Parsing limits.
    pub options: ParseOptions,
    /// How often the directory is checked for changes.
    pub poll_interval: Duration,
}

/// Name, size and modification time of every manifest file.
type Snapshot = Result<Vec<(PathBuf, u64, Option<SystemTime>)>, String>;

fn snapshot(source: &DirectorySource) -> Snapshot {
    let files = manifest_files(&source.dir).map_err(|e| e.to_string())?;
    Ok(files
        .into_iter()
        .map(|path| {
            // Follow symlinks: a ConfigMap volume swaps a link when its content changes.
            let meta = std::fs::metadata(&path).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let modified = meta.and_then(|m| m.modified().ok());
            (path, len, modified)
        })
        .collect())
}

pub(super) async fn watch_loop(inner: Weak<Inner>, source: DirectorySource) {
    let mut applied: Option<Snapshot> = None;
    let mut pending: Option<Snapshot> = None;
    loop {
        let probe = source.clone();
        let Ok(current) = tokio::task::spawn_blocking(move || snapshot(&probe)).await else {
            return;
        };
        let changed = applied.as_ref() != Some(&current);
        let settled = applied.is_none() || pending.as_ref() == Some(&current);
        if changed && settled {
            let Some(inner) = inner.upgrade() else { return };
            reload(&Server::from_inner(inner), &source).await;
            applied = Some(current);
            pending = None;
        } else if changed {
            pending = Some(current);
        } else {
            pending = None;
        }
        tokio::time::sleep(source.poll_interval).await;
    }
}

async fn reload(server: &Server, source: &DirectorySource) {
    server.server_metrics().reloads.inc();
    let probe = source.clone();
    let parsed = tokio::task::spawn_blocking(move || load_dir(&probe.dir, &probe.placement, &probe.options)).await;
    match parsed {
        Ok(Ok(host)) => {
            let status = server.reconcile(host).await;
            tracing::info!(
                generation = status.generation,
                functions = status.functions.len(),
                ready = status.is_ready(),
                "manifests applied"
            );
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "manifests not applied; the running functions keep serving");
            server.report_source_error(error.to_string());
        }
        Err(error) => server.report_source_error(format!("manifest reader failed: {error}")),
    }
}
