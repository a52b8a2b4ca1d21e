//! The registry of function families, by kind: the built-in ones and any a program adds.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::family::Family;
use crate::function::LoadError;
use crate::spec::FunctionSpec;

/// The registered families, by kind.
#[derive(Clone, Default)]
pub struct Families {
    by_kind: BTreeMap<&'static str, Arc<dyn Family>>,
}

impl Families {
    /// No family at all (add some with [`Families::register`]).
    pub fn empty() -> Families {
        Families::default()
    }

    /// The families vknf ships: `forest` and `generic`.
    pub fn builtin() -> Families {
        let mut families = Families::empty();
        families.register(Arc::new(crate::families::forest::ForestFamily));
        families.register(Arc::new(crate::families::generic::GenericFamily));
        families
    }

    /// Adds a family; a family of the same kind is replaced.
    pub fn register(&mut self, family: Arc<dyn Family>) -> &mut Families {
        self.by_kind.insert(family.kind(), family);
        self
    }

    /// The family of `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Family>> {
        self.by_kind.get(kind)
    }

    /// The registered kinds, in order.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_kind.keys().copied()
    }

    /// The family of a spec's kind, or the error that names the known kinds.
    pub fn family_of(&self, spec: &FunctionSpec) -> Result<&Arc<dyn Family>, LoadError> {
        self.get(&spec.kind).ok_or_else(|| LoadError::UnknownKind {
            function: spec.name.clone(),
            kind: spec.kind.clone(),
            known: self.kinds().collect::<Vec<_>>().join(", "),
        })
    }

    /// The kinds whose families take the parameter `param`.
    pub fn kinds_taking(&self, param: &str) -> Vec<&'static str> {
        self.by_kind
            .values()
            .filter(|f| f.params().contains(&param))
            .map(|f| f.kind())
            .collect()
    }

    /// Every parameter some family takes.
    pub fn all_params(&self) -> Vec<&'static str> {
        let mut params: Vec<&'static str> = self.by_kind.values().flat_map(|f| f.params().iter().copied()).collect();
        params.sort_unstable();
        params.dedup();
        params
    }
}

impl std::fmt::Debug for Families {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds()).finish()
    }
}
