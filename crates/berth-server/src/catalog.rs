//! What the control plane serves, and replacing an app's part of it while serving (`berth
//! serve` reloading a saved edit; a later `berth deploy` to a running server): new pools with
//! the new definitions take new calls, the old pools finish what they accepted and drain.
use std::collections::HashSet;
use std::io;
use std::ops::Deref;
use std::sync::Arc;

use berth_core::{Command, PoolId};

use crate::plane::{FunctionDef, Registry, Shared};

/// One version of what is served: the functions callers reach now, and every definition served
/// since the start, which pools and containers name by index (a replaced one stays for the pools
/// that drain it).
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    /// What callers reach now.
    pub current: Registry,
    /// The index in `defs` of each of `current.functions`.
    pub index: Vec<usize>,
    pub defs: Vec<Arc<FunctionDef>>,
    /// Apps stopped by `berth app stop` and not served again since: callers are told so.
    pub stopped: Vec<String>,
}

impl Deref for Catalog {
    type Target = Registry;

    fn deref(&self) -> &Registry {
        &self.current
    }
}

impl Catalog {
    pub fn new(registry: Registry) -> Self {
        let defs = registry.functions.iter().cloned().map(Arc::new).collect();
        Self { index: (0..registry.functions.len()).collect(), current: registry, defs, stopped: Vec::new() }
    }

    /// The function `app/name` callers reach now: its index in `defs`, and its definition there.
    pub fn find(&self, app: &str, name: &str) -> Option<(usize, &Arc<FunctionDef>)> {
        let at = self.current.functions.iter().position(|d| d.app == app && d.name == name)?;
        let index = self.index[at];
        Some((index, &self.defs[index]))
    }

    pub fn is_current(&self, def: usize) -> bool {
        self.index.contains(&def)
    }
}

/// A deploy asked of the server (`POST /_berth/deploy`, `berth deploy app.ts`): the app file to
/// serve, and the directory its containers start in. Whoever serves the process (`berth serve`'s
/// JavaScript, which loads the file as a reload does) answers with what the server serves now,
/// as JSON, or why the file was not deployed.
#[derive(Debug)]
pub struct DeployAsk {
    pub file: String,
    pub cwd: String,
    pub answer: tokio::sync::oneshot::Sender<Result<String, String>>,
}

/// What [`Shared::replace_apps`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replaced {
    /// Functions and classes the apps serve now.
    pub functions: usize,
    /// Pools of the previous definitions, draining (their accepted inputs finish first).
    pub retired_pools: usize,
}

impl Shared {
    /// Replaces apps `apps` with `registry`'s functions (every one of which must belong to one
    /// of them): calls from now on resolve to the new definitions and go to new pools; each pool
    /// of a replaced definition runs what it accepted, then its containers drain (exit hooks
    /// run). Other apps are untouched. Pools that keep containers warm start now.
    pub(crate) fn replace_apps(&self, apps: &[String], registry: Registry) -> io::Result<Replaced> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        for f in &registry.functions {
            if !apps.contains(&f.app) {
                return Err(invalid(format!(
                    "{}/{}: its app '{}' is not among the apps replaced ({})",
                    f.app,
                    f.name,
                    f.app,
                    apps.join(", ")
                )));
            }
            f.spec.validate().map_err(|e| invalid(format!("{}/{}: {e}", f.app, f.name)))?;
        }
        let mut seen = HashSet::new();
        for f in &registry.functions {
            if !seen.insert((&f.app, &f.name)) {
                return Err(invalid(format!("{}/{} is defined twice", f.app, f.name)));
            }
        }
        let count = registry.functions.len();
        let mut st = self.lock();
        let mut catalog = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        let old = Arc::clone(&catalog);
        let mut next = Catalog { defs: old.defs.clone(), ..Catalog::default() };
        next.stopped = old.stopped.iter().filter(|a| !apps.contains(a)).cloned().collect();
        let mut gone = HashSet::new();
        for (f, &i) in old.current.functions.iter().zip(&old.index) {
            if apps.contains(&f.app) {
                gone.insert(i);
            } else {
                next.current.functions.push(f.clone());
                next.index.push(i);
            }
        }
        let mut added = Vec::with_capacity(count);
        for f in registry.functions {
            let i = next.defs.len();
            next.defs.push(Arc::new(f.clone()));
            next.current.functions.push(f);
            next.index.push(i);
            added.push(i);
        }
        *catalog = Arc::new(next);
        drop(catalog);
        // Under the state lock: no call can have picked a retired pool after this (see `pool`).
        let retired: Vec<PoolId> = st.pools.iter().filter(|(_, p)| gone.contains(&p.def)).map(|(&id, _)| id).collect();
        st.pools_by_key.retain(|def, _| !gone.contains(def));
        for &id in &retired {
            let _ = self.commands.send(Command::RetirePool(id));
        }
        drop(st);
        self.warm(&added);
        Ok(Replaced { functions: count, retired_pools: retired.len() })
    }

    /// `berth app stop`: app `app` serves no new call (callers are told it was stopped), its
    /// pools run what they accepted, then their containers drain (exit hooks run), as for a
    /// replaced app. Errors naming the apps served when `app` is not one of them.
    pub(crate) fn stop_app(&self, app: &str) -> io::Result<Replaced> {
        if !self.catalog().current.functions.iter().any(|f| f.app == app) {
            return Err(io::Error::new(io::ErrorKind::NotFound, crate::functions::unknown_app(&self.catalog(), app)));
        }
        let replaced = self.replace_apps(&[app.to_string()], Registry::default())?;
        let mut catalog = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Catalog {
            current: catalog.current.clone(),
            index: catalog.index.clone(),
            defs: catalog.defs.clone(),
            stopped: catalog.stopped.clone(),
        };
        next.stopped.push(app.to_string());
        *catalog = Arc::new(next);
        Ok(replaced)
    }

    /// Starts the pools of `defs` that keep containers warm (as in Modal, before the first call):
    /// those whose parameters all have a default, with minContainers above 0.
    pub(crate) fn warm(&self, defs: &[usize]) {
        for &i in defs {
            let Some(def) = self.def(i) else { continue };
            if let (Ok(params), true) = (crate::params::canonical(&def, &[]), def.spec.min_containers > 0) {
                let _ = self.pool(i, &params);
            }
        }
    }
}
