//! Who may do what: per-caller authorization with Cedar policies (`--policy-file`).
//!
//! Without a policy file every caller may do everything (as before policies existed). With
//! one, Cedar's semantics hold: what no policy permits is denied, and `forbid` wins. The entity
//! model is the schema in `policy/stream-export.cedarschema` (compiled in), against which every
//! policy set is validated, at start-up and at each reload (SIGHUP): a set that does not parse
//! or validate is refused whole.
//!
//! The actions of the entity model are the RPCs: a call's action is `Action::"<name>"`, its
//! [`Rpc::name`] (`ExportChannels` and `ExportUsers` are checked once per channel or user).

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use tonic::Status;

use super::{caller::Caller, rpc::Rpc};
use crate::contract::status;

/// The schema that every policy set must validate against.
pub const SCHEMA: &str = include_str!("../../policy/stream-export.cedarschema");

/// How many decisions are remembered (least recently used go first).
const DECISIONS_REMEMBERED: u64 = 10_000;

/// What an action is about.
#[derive(Clone, Debug)]
pub enum Resource<'a> {
    /// `Channel::"<type>:<id>"`, with the export's format version (`"v1"`/`"v2"`).
    Channel {
        /// The channel type.
        kind: &'a str,
        /// The channel id.
        id: &'a str,
        /// `context.version`.
        version: &'static str,
    },
    /// `User::"<id>"`.
    User(&'a str),
    /// `Task::"<id>"`, with its owner and submit RPC when the service recorded it.
    Task {
        /// The task id.
        id: &'a str,
        /// Who submitted it through this service.
        owner: Option<&'a str>,
        /// The submit's RPC.
        rpc: Option<&'a str>,
    },
    /// `Job::"<id>"`, with the caller that created it (none yet at `CreateExportJob`).
    Job {
        /// The job id.
        id: &'a str,
        /// Who created it.
        owner: Option<&'a str>,
        /// Its `archive_uri`, normalised, when it archives.
        archive: Option<&'a str>,
    },
    /// `Schedule::"<id>"`, with the caller that created it (none yet at `CreateExportSchedule`).
    Schedule {
        /// The schedule id.
        id: &'a str,
        /// Who created it.
        owner: Option<&'a str>,
        /// Its template's `archive_uri`, normalised, when its jobs archive.
        archive: Option<&'a str>,
    },
    /// `Service::"stream-export"`.
    Service,
}

impl Resource<'_> {
    /// The resource as Cedar names it, e.g. `Channel::"messaging:general"`.
    pub fn uid(&self) -> String {
        let (kind, id) = match self {
            Self::Channel { kind, id, .. } => ("Channel", format!("{kind}:{id}")),
            Self::User(id) => ("User", (*id).to_owned()),
            Self::Task { id, .. } => ("Task", (*id).to_owned()),
            Self::Job { id, .. } => ("Job", (*id).to_owned()),
            Self::Schedule { id, .. } => ("Schedule", (*id).to_owned()),
            Self::Service => ("Service", "stream-export".to_owned()),
        };
        format!("{kind}::{}", serde_json::Value::String(id))
    }
}

/// An owner no caller has: whether a caller may act on a resource that `NOBODY` owns says
/// whether it may act on others' (the listings use it to choose the owner's index or all).
pub const NOBODY: &str = "\u{0}stream-export:nobody";

/// The policies in force, reloadable. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Policies {
    inner: Option<Arc<Loaded>>,
}

#[derive(Debug)]
struct Loaded {
    path: PathBuf,
    schema: Schema,
    types: EntityTypes,
    /// Remembered decisions, by [`Loaded::decision_key`].
    decisions: moka::sync::Cache<String, bool>,
    /// Bumped at each reload; part of every decision's key.
    generation: AtomicU64,
    /// Told of each reload, so that open streams are checked again.
    reloads: tokio::sync::watch::Sender<u64>,
    set: RwLock<Arc<PolicySet>>,
    authorizer: Authorizer,
}

impl Policies {
    /// No policy file: every caller may do everything.
    pub fn permit_all() -> Self {
        Self { inner: None }
    }

    /// Reads, parses and validates the policy set at `path`. The error is Cedar's message.
    pub fn load(path: &Path) -> Result<Self, String> {
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA).map_err(|error| error.to_string())?;
        let set = read(path, &schema)?;
        let loaded = Loaded {
            path: path.to_owned(),
            schema,
            types: EntityTypes::new()?,
            decisions: moka::sync::Cache::new(DECISIONS_REMEMBERED),
            generation: AtomicU64::new(0),
            reloads: tokio::sync::watch::Sender::new(0),
            set: RwLock::new(Arc::new(set)),
            authorizer: Authorizer::new(),
        };
        Ok(Self { inner: Some(Arc::new(loaded)) })
    }

    /// Whether a policy file is in force.
    pub fn is_enforced(&self) -> bool {
        self.inner.is_some()
    }

    /// Reads the policy file again; a set that does not parse or validate is refused and the
    /// old one stays. Returns the number of policies now in force.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(loaded) = &self.inner else { return Ok(0) };
        let set = read(&loaded.path, &loaded.schema)?;
        let count = set.policies().count();
        *loaded.set.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(set);
        // Decisions of the old set: a new generation never matches them, and they are dropped.
        let generation = loaded.generation.fetch_add(1, Ordering::Relaxed) + 1;
        loaded.decisions.invalidate_all();
        loaded.reloads.send_replace(generation);
        Ok(count)
    }

    /// Changes at each reload that took effect; `None` without a policy file (nothing to reload).
    pub fn reloads(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.as_ref().map(|loaded| loaded.reloads.subscribe())
    }

    /// Whether `caller` may do `action` on `resource`. Decisions are remembered (a decision
    /// depends on nothing but its inputs and the policy set): a caller polling one task pays
    /// for one evaluation, not one per call.
    pub fn allows(&self, caller: &Caller, action: Rpc, resource: &Resource<'_>) -> bool {
        let Some(loaded) = &self.inner else { return true };
        let key = loaded.decision_key(caller, action, resource);
        if let Some(allowed) = loaded.decisions.get(&key) {
            return allowed;
        }
        let allowed = match loaded.decide(caller, action, resource) {
            Ok(decision) => decision == Decision::Allow,
            Err(error) => {
                // The request did not fit the schema (a bug of this service): refused.
                tracing::error!(%error, action = action.name(), "an authorization request could not be built");
                false
            }
        };
        loaded.decisions.insert(key, allowed);
        allowed
    }

    /// [`Policies::allows`], as a status: PERMISSION_DENIED `NOT_AUTHORIZED` naming the action
    /// and the resource, with an audit event.
    pub fn check(&self, caller: &Caller, action: Rpc, resource: &Resource<'_>) -> Result<(), Status> {
        if self.allows(caller, action, resource) {
            return Ok(());
        }
        let resource = resource.uid();
        super::audit::refused(caller, action, &resource);
        Err(status::not_authorized(action.name(), &resource))
    }
}

impl Loaded {
    /// Everything a decision depends on besides the policy set, and the set's generation.
    fn decision_key(&self, caller: &Caller, action: Rpc, resource: &Resource<'_>) -> String {
        let generation = self.generation.load(Ordering::Relaxed);
        let (owner, rpc, version) = match resource {
            Resource::Task { owner, rpc, .. } => (owner.unwrap_or("\u{1}"), rpc.unwrap_or("\u{1}"), ""),
            Resource::Job { owner, archive, .. } | Resource::Schedule { owner, archive, .. } => {
                (owner.unwrap_or("\u{1}"), archive.unwrap_or("\u{1}"), "")
            }
            Resource::Channel { version, .. } => ("", "", *version),
            Resource::User(_) | Resource::Service => ("", "", ""),
        };
        format!(
            "{generation}\0{}\0{}\0{:?}\0{}\0{owner}\0{rpc}\0{version}",
            action.name(),
            caller.name,
            caller.source,
            resource.uid()
        )
    }

    /// `kind::"id"`, for a type of the model.
    fn uid(&self, kind: &str, id: &str) -> Result<EntityUid, String> {
        let kind = self.types.0.get(kind).ok_or_else(|| format!("no entity type {kind}"))?;
        Ok(EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id)))
    }

    fn decide(&self, caller: &Caller, action: Rpc, resource: &Resource<'_>) -> Result<Decision, String> {
        let principal = self.uid("Caller", &caller.name)?;
        let principal_entity = Entity::new(
            principal.clone(),
            HashMap::from([("source".to_owned(), RestrictedExpression::new_string(caller.source.name().into()))]),
            HashSet::new(),
        )
        .map_err(|error| error.to_string())?;
        let mut context = Vec::new();
        let (resource_uid, attrs) = match resource {
            Resource::Channel { kind, id, version } => {
                context.push(("version".to_owned(), RestrictedExpression::new_string((*version).to_owned())));
                let attrs = HashMap::from([
                    ("type".to_owned(), RestrictedExpression::new_string((*kind).to_owned())),
                    ("id".to_owned(), RestrictedExpression::new_string((*id).to_owned())),
                ]);
                (self.uid("Channel", &format!("{kind}:{id}"))?, attrs)
            }
            Resource::User(id) => (self.uid("User", id)?, HashMap::new()),
            Resource::Task { id, owner, rpc } => {
                let mut attrs = HashMap::new();
                if let Some(owner) = owner {
                    attrs.insert("owner".to_owned(), RestrictedExpression::new_entity_uid(self.uid("Caller", owner)?));
                }
                if let Some(rpc) = rpc {
                    attrs.insert("rpc".to_owned(), RestrictedExpression::new_string((*rpc).to_owned()));
                }
                (self.uid("Task", id)?, attrs)
            }
            Resource::Job { id, owner, archive } | Resource::Schedule { id, owner, archive } => {
                let kind = if matches!(resource, Resource::Job { .. }) { "Job" } else { "Schedule" };
                let mut attrs = HashMap::new();
                if let Some(owner) = owner {
                    attrs.insert("owner".to_owned(), RestrictedExpression::new_entity_uid(self.uid("Caller", owner)?));
                }
                if let Some(archive) = archive {
                    attrs.insert("archive".to_owned(), RestrictedExpression::new_string((*archive).to_owned()));
                }
                (self.uid(kind, id)?, attrs)
            }
            Resource::Service => (self.uid("Service", "stream-export")?, HashMap::new()),
        };
        let resource_entity =
            Entity::new(resource_uid.clone(), attrs, HashSet::new()).map_err(|error| error.to_string())?;
        // Built here to the schema (the unit tests check the example set's decisions), so they
        // are not validated against it again per call: that doubled the cost of a decision.
        // The schema has no action groups, so the action entities are not needed either.
        let entities =
            Entities::from_entities([principal_entity, resource_entity], None).map_err(|error| error.to_string())?;
        let context = Context::from_pairs(context).map_err(|error| error.to_string())?;
        let request = Request::new(principal, self.uid("Action", action.name())?, resource_uid, context, None)
            .map_err(|error| error.to_string())?;
        let set = Arc::clone(&self.set.read().unwrap_or_else(|poisoned| poisoned.into_inner()));
        Ok(self.authorizer.is_authorized(&request, &set, &entities).decision())
    }
}

/// Parses and validates a policy file against the schema.
fn read(path: &Path, schema: &Schema) -> Result<PolicySet, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let set = PolicySet::from_str(&text).map_err(|errors| {
        let located: Vec<String> = errors.iter().map(|error| locate(&text, error)).collect();
        format!("{}: {}", path.display(), located.join("; "))
    })?;
    let validation = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if !validation.validation_passed() {
        let errors: Vec<String> = validation.validation_errors().map(ToString::to_string).collect();
        return Err(format!(
            "{}: the policies do not validate against the schema: {}",
            path.display(),
            errors.join("; ")
        ));
    }
    Ok(set)
}

/// A parse error with where it is: `line L, column C: <error>`.
fn locate(text: &str, error: &cedar_policy::ParseError) -> String {
    use miette::Diagnostic;
    let offset = error.labels().and_then(|mut labels| labels.next()).map(|label| label.offset());
    match offset {
        Some(offset) => {
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |last| last.chars().count()) + 1;
            format!("line {line}, column {column}: {error}")
        }
        None => error.to_string(),
    }
}

/// The entity types of the model, parsed once (parsing a name costs more than a decision's
/// bookkeeping).
#[derive(Debug)]
struct EntityTypes(HashMap<&'static str, EntityTypeName>);

impl EntityTypes {
    fn new() -> Result<Self, String> {
        ["Caller", "Channel", "User", "Task", "Job", "Schedule", "Service", "Action"]
            .into_iter()
            .map(|name| EntityTypeName::from_str(name).map(|parsed| (name, parsed)).map_err(|error| error.to_string()))
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Caller {
        Caller { name: name.into(), source: crate::service::caller::CallerSource::Token }
    }

    fn example() -> Policies {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/examples/teams.cedar");
        Policies::load(&path).expect("the example policies validate")
    }

    #[test]
    fn the_example_policies_decide_as_the_readme_says() {
        let policies = example();
        let livestream = |version| Resource::Channel { kind: "livestream", id: "finals", version };
        assert!(policies.allows(&caller("analytics"), Rpc::ExportChannels, &livestream("v2")));
        assert!(!policies.allows(&caller("analytics"), Rpc::ExportChannels, &livestream("v1")));
        assert!(!policies.allows(&caller("privacy"), Rpc::ExportChannels, &livestream("v2")));
        assert!(policies.allows(&caller("privacy"), Rpc::ExportUser, &Resource::User("u-1")));
        let task = Resource::Task { id: "t-1", owner: Some("analytics"), rpc: Some("ExportChannels") };
        assert!(policies.allows(&caller("analytics"), Rpc::ReadExport, &task));
        assert!(!policies.allows(&caller("privacy"), Rpc::ReadExport, &task));
        assert!(policies.allows(&caller("platform"), Rpc::ReadExport, &task));
        let unknown = Resource::Task { id: "t-2", owner: None, rpc: None };
        assert!(!policies.allows(&caller("analytics"), Rpc::GetTask, &unknown));
        assert!(policies.allows(&caller("platform"), Rpc::GetTask, &unknown));
        assert!(policies.allows(&caller("anonymous"), Rpc::ListTasks, &Resource::Service));
        assert!(Policies::permit_all().allows(&caller("anyone"), Rpc::ExportUsers, &Resource::User("u")));
        let new_job = Resource::Job { id: "j-1", owner: None, archive: None };
        assert!(policies.allows(&caller("analytics"), Rpc::CreateExportJob, &new_job));
        let job = Resource::Job { id: "j-1", owner: Some("analytics"), archive: None };
        assert!(policies.allows(&caller("analytics"), Rpc::WatchExportJob, &job));
        assert!(!policies.allows(&caller("privacy"), Rpc::GetExportJob, &job));
        assert!(!policies.allows(&caller("privacy"), Rpc::CancelExportJob, &job));
        assert!(policies.allows(&caller("platform"), Rpc::ListExportJobTasks, &job));
        assert!(policies.allows(&caller("platform"), Rpc::VerifyExportJob, &job));
        // A job that archives writes only under its team's prefix.
        let archived = |archive| Resource::Job { id: "j-2", owner: None, archive: Some(archive) };
        let own = archived("s3://exports-bucket/teams/analytics/daily");
        assert!(policies.allows(&caller("analytics"), Rpc::CreateExportJob, &own));
        assert!(!policies.allows(&caller("privacy"), Rpc::CreateExportJob, &own));
        let elsewhere = archived("s3://exports-bucket/teams/analytics-x/daily");
        assert!(!policies.allows(&caller("analytics"), Rpc::CreateExportJob, &elsewhere));
        // Only analytics schedules, into its prefix; owners manage their own schedules.
        let schedule = |archive| Resource::Schedule { id: "s-1", owner: None, archive: Some(archive) };
        let daily = schedule("s3://exports-bucket/teams/analytics/daily");
        assert!(policies.allows(&caller("analytics"), Rpc::CreateExportSchedule, &daily));
        assert!(!policies.allows(&caller("privacy"), Rpc::CreateExportSchedule, &daily));
        let unarchived = Resource::Schedule { id: "s-1", owner: None, archive: None };
        assert!(!policies.allows(&caller("analytics"), Rpc::CreateExportSchedule, &unarchived));
        let owned = Resource::Schedule { id: "s-1", owner: Some("analytics"), archive: None };
        assert!(policies.allows(&caller("analytics"), Rpc::UpdateExportSchedule, &owned));
        assert!(!policies.allows(&caller("privacy"), Rpc::DeleteExportSchedule, &owned));
        assert!(policies.allows(&caller("platform"), Rpc::GetExportSchedule, &owned));
        assert!(!policies.allows(&caller("platform"), Rpc::DeleteExportSchedule, &owned));
    }

    #[test]
    fn the_schemas_actions_are_the_rpcs() {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).expect("the schema parses");
        let actions: HashSet<String> = schema.actions().map(|action| action.id().unescaped().to_owned()).collect();
        let rpcs: HashSet<String> = Rpc::ALL.iter().map(|rpc| rpc.name().to_owned()).collect();
        assert_eq!(actions, rpcs);
    }

    #[test]
    fn a_refusal_names_the_action_and_the_resource() {
        let refused = example()
            .check(
                &caller("analytics"),
                Rpc::ExportChannels,
                &Resource::Channel { kind: "backoffice", id: "a\"b", version: "v2" },
            )
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains(r#"Channel::"backoffice:a\"b""#), "{}", refused.message());
    }

    #[test]
    fn policies_that_do_not_validate_are_refused_with_cedars_message() {
        let path = std::env::temp_dir().join(format!("stream-export-policy-{}.cedar", std::process::id()));
        std::fs::write(&path, "permit (principal, action == Action::\"Delete\", resource);").expect("writes");
        let error = Policies::load(&path).expect_err("an unknown action does not validate");
        assert!(error.contains("Delete"), "{error}");
        std::fs::write(&path, "permit (principal, action, resource)\nwhen { resource.colour == };").expect("writes");
        let error = Policies::load(&path).expect_err("a parse error");
        assert!(error.contains("line 2, column 27: unexpected token"), "{error}");
        let _ = std::fs::remove_file(&path);
    }
}
