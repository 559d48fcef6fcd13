//! The REST routes: LINSTOR's v1 paths, each registered through [`Routes::add`] so that
//! [`route_list`] is exactly what the router serves (a test holds it against
//! docs/controller-openapi.yaml).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use model::{Cluster, ModelError, ObjectKind, Placement, PropsModify, name::key};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::live::{LiveView, RscObs};
use crate::rc::{self, ApiCallRc, Ctx, Op};
use crate::wire;
use crate::{Controller, MutateError};

type App = Arc<Controller>;
type Body = Result<Bytes, BytesRejection>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// The router under construction and the list of what it serves.
pub struct Routes {
    router: Router<App>,
    list: Vec<(Method, &'static str)>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("list", &self.list).finish()
    }
}

impl Routes {
    fn add<H, T>(mut self, m: Method, path: &'static str, h: H) -> Self
    where
        H: Handler<T, App>,
        T: 'static,
    {
        self.list.push((m, path));
        let mr = match m {
            Method::Get => get(h),
            Method::Post => post(h),
            Method::Put => put(h),
            Method::Delete => delete(h),
        };
        self.router = self.router.route(path, mr);
        self
    }
}

fn routes() -> Routes {
    use Method::{Delete as D, Get as G, Post as P, Put as U};
    let r = Routes {
        router: Router::new(),
        list: Vec::new(),
    };
    r.add(G, "/health", health)
        .add(G, "/v1/controller/version", version)
        .add(G, "/v1/controller/properties", ctrl_props_get)
        .add(P, "/v1/controller/properties", ctrl_props_set)
        .add(D, "/v1/controller/properties/{*key}", ctrl_prop_delete)
        // nodes
        .add(G, "/v1/nodes", nodes_list)
        .add(P, "/v1/nodes", node_create)
        .add(G, "/v1/nodes/{node}", node_get)
        .add(U, "/v1/nodes/{node}", node_modify)
        .add(D, "/v1/nodes/{node}", node_delete)
        .add(D, "/v1/nodes/{node}/lost", node_lost)
        .add(G, "/v1/nodes/{node}/net-interfaces", netifs_list)
        .add(P, "/v1/nodes/{node}/net-interfaces", netif_create)
        .add(G, "/v1/nodes/{node}/net-interfaces/{netif}", netif_get)
        .add(U, "/v1/nodes/{node}/net-interfaces/{netif}", netif_modify)
        .add(D, "/v1/nodes/{node}/net-interfaces/{netif}", netif_delete)
        // storage pools
        .add(G, "/v1/nodes/{node}/storage-pools", node_pools_list)
        .add(P, "/v1/nodes/{node}/storage-pools", pool_create)
        .add(G, "/v1/nodes/{node}/storage-pools/{pool}", pool_get)
        .add(U, "/v1/nodes/{node}/storage-pools/{pool}", pool_modify)
        .add(D, "/v1/nodes/{node}/storage-pools/{pool}", pool_delete)
        .add(G, "/v1/view/storage-pools", pools_view)
        // resource groups and volume groups
        .add(G, "/v1/resource-groups", rgs_list)
        .add(P, "/v1/resource-groups", rg_create)
        .add(G, "/v1/resource-groups/{rg}", rg_get)
        .add(U, "/v1/resource-groups/{rg}", rg_modify)
        .add(D, "/v1/resource-groups/{rg}", rg_delete)
        .add(P, "/v1/resource-groups/{rg}/spawn", rg_spawn)
        .add(P, "/v1/resource-groups/{rg}/query-size-info", rg_size_info)
        .add(G, "/v1/resource-groups/{rg}/volume-groups", vgs_list)
        .add(P, "/v1/resource-groups/{rg}/volume-groups", vg_create)
        .add(G, "/v1/resource-groups/{rg}/volume-groups/{vnr}", vg_get)
        .add(U, "/v1/resource-groups/{rg}/volume-groups/{vnr}", vg_modify)
        .add(D, "/v1/resource-groups/{rg}/volume-groups/{vnr}", vg_delete)
        .add(
            P,
            "/v1/queries/resource-groups/query-all-size-info",
            all_size_info,
        )
        // resource definitions and volume definitions
        .add(G, "/v1/resource-definitions", rds_list)
        .add(P, "/v1/resource-definitions", rd_create)
        .add(G, "/v1/resource-definitions/{rsc}", rd_get)
        .add(U, "/v1/resource-definitions/{rsc}", rd_modify)
        .add(D, "/v1/resource-definitions/{rsc}", rd_delete)
        .add(P, "/v1/resource-definitions/{rsc}/autoplace", rd_autoplace)
        .add(
            G,
            "/v1/resource-definitions/{rsc}/volume-definitions",
            vds_list,
        )
        .add(
            P,
            "/v1/resource-definitions/{rsc}/volume-definitions",
            vd_create,
        )
        .add(
            G,
            "/v1/resource-definitions/{rsc}/volume-definitions/{vnr}",
            vd_get,
        )
        .add(
            U,
            "/v1/resource-definitions/{rsc}/volume-definitions/{vnr}",
            vd_modify,
        )
        .add(
            D,
            "/v1/resource-definitions/{rsc}/volume-definitions/{vnr}",
            vd_delete,
        )
        // resources
        .add(G, "/v1/resource-definitions/{rsc}/resources", rscs_list)
        .add(P, "/v1/resource-definitions/{rsc}/resources", rscs_create)
        .add(
            G,
            "/v1/resource-definitions/{rsc}/resources/{node}",
            rsc_get,
        )
        .add(
            P,
            "/v1/resource-definitions/{rsc}/resources/{node}",
            rsc_create_one,
        )
        .add(
            U,
            "/v1/resource-definitions/{rsc}/resources/{node}",
            rsc_modify,
        )
        .add(
            D,
            "/v1/resource-definitions/{rsc}/resources/{node}",
            rsc_delete,
        )
        .add(
            P,
            "/v1/resource-definitions/{rsc}/resources/{node}/make-available",
            rsc_make_available,
        )
        .add(G, "/v1/view/resources", rscs_view)
        // tandem's own: the satellites' links and what keeps them from converging
        .add(G, "/v1/satellites", satellites_list)
}

/// Every (method, path) the router serves, paths in axum's syntax.
pub fn route_list() -> Vec<(&'static str, &'static str)> {
    routes()
        .list
        .into_iter()
        .map(|(m, p)| (m.as_str(), p))
        .collect()
}

/// The REST API on `ctl`.
pub fn router(ctl: App) -> Router {
    routes()
        .router
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(wire::MAX_BODY))
        .with_state(ctl)
}

// ---- helpers ----

fn rc_reply(rcs: Vec<ApiCallRc>, success: StatusCode) -> Response {
    (rc::http_status(&rcs, success), axum::Json(rcs)).into_response()
}

fn ok_json(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn not_found(ctx: Ctx, kind: ObjectKind, name: impl Into<String>) -> Response {
    let e = ModelError::NotFound {
        kind,
        name: name.into(),
    };
    rc_reply(vec![ctx.model_error(&e)], StatusCode::OK)
}

async fn no_route() -> Response {
    let e = Ctx::new(Op::Query, ObjectKind::Controller).error(
        rc::FAIL_INVLD_REQUEST,
        "no such REST endpoint",
        "tandem does not serve this path (or not with this method)",
        "see docs/controller-openapi.yaml for what the controller serves",
    );
    (StatusCode::NOT_FOUND, axum::Json(vec![e])).into_response()
}

/// The body as `T`; an empty body is `T::default()`. Anything else that does not parse
/// is LINSTOR's `API_CALL_PARSE_ERROR` with status 400, and nothing is changed.
// The error is the finished reply, made once per request; boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn parse<T: DeserializeOwned + Default>(body: Body, ctx: Ctx) -> Result<T, Response> {
    let bytes = match body {
        Ok(b) => b,
        Err(e) => {
            let rc = ctx.error(
                rc::FAIL_INVLD_REQUEST,
                "the request body could not be read",
                e.body_text(),
                format!("send a JSON body of at most {} bytes", wire::MAX_BODY),
            );
            return Err((e.status(), axum::Json(vec![rc])).into_response());
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let rc = ApiCallRc {
            ret_code: rc::signed(rc::API_CALL_PARSE_ERROR),
            ..ctx.error(
                0,
                "Unable to parse input json.",
                "the request body is not the JSON this endpoint takes",
                "send the JSON object of LINSTOR's REST API v1 for this path \
                 (docs/controller-openapi.yaml)",
            )
        }
        .with_details(e.to_string());
        (StatusCode::BAD_REQUEST, axum::Json(vec![rc])).into_response()
    })
}

#[allow(clippy::result_large_err)]
fn vnr(s: &str, ctx: Ctx) -> Result<u32, Response> {
    s.parse().map_err(|_| {
        let e = ModelError::InvalidValue {
            field: "volume_number".into(),
            reason: format!("'{s}' is not a volume number"),
            correction: "use a volume number of 0..=65535".into(),
        };
        rc_reply(vec![ctx.model_error(&e)], StatusCode::OK)
    })
}

/// Runs a mutation off the async threads and answers its ApiCallRc list.
async fn mutate<F>(app: App, ctx: Ctx, success: StatusCode, f: F) -> Response
where
    F: FnOnce(&mut Cluster) -> Result<Vec<ApiCallRc>, ModelError> + Send + 'static,
{
    let res = tokio::task::spawn_blocking(move || app.mutate(f)).await;
    let rcs = match res {
        Ok(Ok(rcs)) => rcs,
        Ok(Err(MutateError::Model(e))) => vec![ctx.model_error(&e)],
        Ok(Err(MutateError::Entropy(e))) => {
            tracing::error!("no random bytes: {e}");
            vec![ctx.error(
                rc::FAIL_UNKNOWN_ERROR,
                "the controller could not make a shared secret; nothing changed",
                e.to_string(),
                "check that /dev/urandom is readable by the controller, then repeat the request",
            )]
        }
        Ok(Err(MutateError::Store(e))) => {
            tracing::error!("database write failed: {e}");
            vec![ctx.error(
                rc::FAIL_SQL,
                "the controller could not write its database; nothing changed",
                e.to_string(),
                "check the database file and its disk, then repeat the request",
            )]
        }
        Err(e) => vec![ctx.error(
            rc::FAIL_UNKNOWN_ERROR,
            "the request failed inside the controller; nothing changed",
            e.to_string(),
            "report this as a bug with the request that caused it",
        )],
    };
    rc_reply(rcs, success)
}

/// Query parameters, repeated keys kept (`nodes=a&nodes=b`, as python-linstor sends).
struct Query(Vec<(String, String)>);

impl Query {
    fn new(raw: Option<String>) -> Self {
        Self(
            raw.map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        )
    }

    /// All values of `k`, comma lists split.
    fn list(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(key, _)| key == k)
            .flat_map(|(_, v)| v.split(',').map(str::trim).map(str::to_owned))
            .filter(|v| !v.is_empty())
            .collect()
    }

    fn flag(&self, k: &str) -> bool {
        self.0.iter().any(|(key, v)| {
            key == k && matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes" | "")
        })
    }

    fn number(&self, k: &str) -> usize {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }

    /// `offset` and `limit` (0 = all), as LINSTOR's list endpoints take them.
    fn page<T>(&self, v: Vec<T>) -> Vec<T> {
        let limit = self.number("limit");
        let it = v.into_iter().skip(self.number("offset"));
        if limit == 0 {
            it.collect()
        } else {
            it.take(limit).collect()
        }
    }

    /// Whether `name` passes a name filter (empty filter: everything passes).
    fn names(&self, k: &str, name: &str) -> bool {
        let l = self.list(k);
        l.is_empty() || l.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// `props=KEY` or `props=KEY=VALUE` filters.
    fn props(&self, p: &model::Props) -> bool {
        self.0
            .iter()
            .filter(|(k, _)| k == "props")
            .all(|(_, f)| match f.split_once('=') {
                Some((k, v)) => p.get(k).is_some_and(|x| x == v),
                None => p.contains_key(f),
            })
    }
}

fn offline_warnings<'a>(
    c: &Cluster,
    ctx: Ctx,
    nodes: impl IntoIterator<Item = &'a String>,
) -> Vec<ApiCallRc> {
    let mut seen = std::collections::BTreeSet::new();
    nodes
        .into_iter()
        .filter(|n| seen.insert(key(n)))
        .filter_map(|n| c.node(n))
        .filter(|n| n.connection_status != model::ConnectionStatus::Online)
        .map(|n| {
            ctx.warn(
                rc::WARN_NOT_CONNECTED,
                format!(
                    "No active connection to satellite '{}': the change is stored and is \
                     applied when its satellite connects",
                    n.name
                ),
            )
            .with_ref("Node", n.name.clone())
        })
        .collect()
}

/// Entries for the replicas a placement added, as LINSTOR reports an autoplace.
fn placement_rcs(c: &Cluster, rsc: &str, p: &Placement) -> Vec<ApiCallRc> {
    let ctx = Ctx::new(Op::Create, ObjectKind::Resource);
    let mut out = Vec::new();
    let used: Vec<String> = p
        .diskful
        .iter()
        .map(|d| format!("'{}' ({})", d.node, d.storage_pool))
        .collect();
    if !p.diskful.is_empty() {
        out.push(
            ctx.success(
                rc::CREATED,
                format!(
                    "Resource '{rsc}' successfully autoplaced on {} nodes",
                    p.diskful.len()
                ),
            )
            .with_details(format!(
                "Used nodes (storage pool name): {}",
                used.join(", ")
            ))
            .with_ref("RscDfn", rsc),
        );
    }
    for d in &p.diskless {
        out.push(
            if d.tie_breaker {
                ctx.info(
                    rc::INFO_TIE_BREAKER_CREATED,
                    format!("Tie breaker resource '{rsc}' created on node '{}'", d.node),
                )
            } else {
                ctx.success(
                    rc::CREATED,
                    format!("Diskless resource '{rsc}' created on node '{}'", d.node),
                )
            }
            .with_ref("RscDfn", rsc)
            .with_ref("Node", d.node.clone()),
        );
    }
    if let Some(n) = &p.promote_tiebreaker {
        out.push(ctx.info(
            rc::INFO_TIE_BREAKER_CREATED,
            format!("Diskless resource '{rsc}' on node '{n}' is now the tie breaker"),
        ));
    }
    if let Some(n) = &p.remove_tiebreaker {
        out.push(ctx.info(
            rc::INFO_TIE_BREAKER_DELETING,
            format!("Tie breaker resource '{rsc}' on node '{n}' is no longer needed and deleted"),
        ));
    }
    for note in &p.notes {
        out.push(ctx.info(0, note.clone()));
    }
    let nodes: Vec<String> = p
        .diskful
        .iter()
        .map(|d| d.node.clone())
        .chain(p.diskless.iter().map(|d| d.node.clone()))
        .collect();
    out.extend(offline_warnings(c, ctx, &nodes));
    out
}

fn outcome_rcs(rsc: &str, o: &model::DeleteOutcome) -> Vec<ApiCallRc> {
    let ctx = Ctx::new(Op::Modify, ObjectKind::Resource);
    let mut out = Vec::new();
    if let Some(n) = &o.tiebreaker_added {
        out.push(ctx.info(
            rc::INFO_TIE_BREAKER_CREATED,
            format!("Tie breaker resource '{rsc}' created on node '{n}'"),
        ));
    }
    if let Some(n) = &o.tiebreaker_removed {
        out.push(ctx.info(
            rc::INFO_TIE_BREAKER_DELETING,
            format!("Tie breaker resource '{rsc}' on node '{n}' deleted (no longer needed)"),
        ));
    }
    for note in &o.notes {
        out.push(ctx.info(0, note.clone()));
    }
    out
}

// ---- controller ----

async fn health(State(app): State<App>) -> Response {
    let ok = tokio::task::spawn_blocking(move || app.db_ok())
        .await
        .unwrap_or(false);
    if ok {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "database not reachable").into_response()
    }
}

async fn version() -> Response {
    ok_json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git_hash": "",
        "build_time": "",
        "rest_api_version": crate::REST_API_VERSION,
    }))
}

async fn ctrl_props_get(State(app): State<App>) -> Response {
    ok_json(json!(app.snapshot().controller_props()))
}

async fn ctrl_props_set(State(app): State<App>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Modify, ObjectKind::Controller);
    let req: wire::PropsModifyReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        c.modify_controller_props(&req.into_model())?;
        Ok(vec![ctx.success(
            rc::MODIFIED,
            "Successfully updated controller properties",
        )])
    })
    .await
}

async fn ctrl_prop_delete(State(app): State<App>, Path(k): Path<String>) -> Response {
    let ctx = Ctx::new(Op::Delete, ObjectKind::Controller);
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.modify_controller_props(&PropsModify {
            delete_props: vec![k.clone()],
            ..PropsModify::default()
        })?;
        Ok(vec![ctx.success(
            rc::DELETED,
            format!("Controller property '{k}' deleted"),
        )])
    })
    .await
}

// ---- nodes ----

async fn nodes_list(State(app): State<App>, RawQuery(q): RawQuery) -> Response {
    let q = Query::new(q);
    let c = app.snapshot();
    let live = app.live().view();
    let v: Vec<Value> = c
        .nodes()
        .filter(|n| q.names("nodes", &n.name) && q.props(&n.props))
        .map(|n| wire::node(n, &live))
        .collect();
    ok_json(json!(q.page(v)))
}

async fn node_get(State(app): State<App>, Path(node): Path<String>) -> Response {
    let c = app.snapshot();
    match c.node(&node) {
        Some(n) => ok_json(wire::node(n, &app.live().view())),
        None => not_found(
            Ctx::new(Op::Query, ObjectKind::Node),
            ObjectKind::Node,
            node,
        ),
    }
}

async fn node_create(State(app): State<App>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::Node);
    let req: wire::NodeCreateReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let req = req.into_model()?;
        let name = req.name.clone();
        c.create_node(req)?;
        let mut out = vec![
            ctx.success(rc::CREATED, format!("New node '{name}' registered."))
                .with_ref("Node", name.clone()),
        ];
        out.extend(offline_warnings(c, ctx, [&name]));
        Ok(out)
    })
    .await
}

async fn node_modify(State(app): State<App>, Path(node): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Modify, ObjectKind::Node);
    let req: wire::NodeModifyReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.modify_node(&node, &req.into_model()?)?;
        Ok(vec![
            ctx.success(rc::MODIFIED, format!("Node '{node}' modified."))
                .with_ref("Node", node),
        ])
    })
    .await
}

async fn node_delete(State(app): State<App>, Path(node): Path<String>) -> Response {
    let ctx = Ctx::new(Op::Delete, ObjectKind::Node);
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.delete_node(&node)?;
        Ok(vec![
            ctx.success(rc::DELETED, format!("Node '{node}' deleted."))
                .with_ref("Node", node),
        ])
    })
    .await
}

async fn node_lost(State(app): State<App>, Path(node): Path<String>) -> Response {
    let ctx = Ctx::new(Op::Delete, ObjectKind::Node);
    if app.snapshot().node(&node).is_none() && app.live().tombstone(&node).is_some() {
        // Asked again for a node that is gone: forget its pending cleanup.
        let a = app.clone();
        let n = node.clone();
        let res = tokio::task::spawn_blocking(move || a.forget_tombstone(&n)).await;
        let rcs = match res {
            Ok(Ok(_)) => vec![
                ctx.success(
                    rc::DELETED,
                    format!(
                        "The pending cleanup of lost node '{node}' is forgotten: if its \
                         satellite ever answers again, remove its volumes and resource files \
                         by hand"
                    ),
                )
                .with_ref("Node", node),
            ],
            Ok(Err(e)) => vec![ctx.error(
                rc::FAIL_SQL,
                "the controller could not write its database; nothing changed",
                e.to_string(),
                "check the database file and its disk, then repeat the request",
            )],
            Err(e) => vec![ctx.error(
                rc::FAIL_UNKNOWN_ERROR,
                "the request failed inside the controller; nothing changed",
                e.to_string(),
                "report this as a bug with the request that caused it",
            )],
        };
        return rc_reply(rcs, StatusCode::OK);
    }
    let online = app.live().view().online(&node);
    mutate(app, ctx, StatusCode::OK, move |c| {
        if online && let Some(n) = c.node(&node) {
            return Err(ModelError::InUse {
                kind: ObjectKind::Node,
                name: n.name.clone(),
                reason: "its satellite is ONLINE: 'node lost' is for a node that is gone".into(),
                correction: format!(
                    "delete its resources and then the node (node delete {0}), or stop its \
                     satellite first if {0} really is to be dropped",
                    n.name
                ),
            });
        }
        let affected = c.lose_node(&node)?;
        let mut out = vec![
            ctx.success(
                rc::DELETED,
                format!(
                    "Node '{node}' lost: it and its {} resources are forgotten; if its \
                     satellite answers again it is told to remove everything it made \
                     (tandem node list shows the pending cleanup)",
                    affected.len()
                ),
            )
            .with_ref("Node", node),
        ];
        for (rsc, o) in &affected {
            out.extend(outcome_rcs(rsc, o));
        }
        Ok(out)
    })
    .await
}

async fn netifs_list(State(app): State<App>, Path(node): Path<String>) -> Response {
    let c = app.snapshot();
    match c.node(&node) {
        Some(n) => ok_json(json!(
            n.net_interfaces
                .iter()
                .map(wire::net_interface)
                .collect::<Vec<_>>()
        )),
        None => not_found(
            Ctx::new(Op::Query, ObjectKind::Node),
            ObjectKind::Node,
            node,
        ),
    }
}

async fn netif_get(State(app): State<App>, Path((node, ni)): Path<(String, String)>) -> Response {
    let c = app.snapshot();
    let ctx = Ctx::new(Op::Query, ObjectKind::NetInterface);
    match c.node(&node) {
        None => not_found(ctx, ObjectKind::Node, node),
        Some(n) => match n.net_interface(&ni) {
            Some(x) => ok_json(wire::net_interface(x)),
            None => not_found(ctx, ObjectKind::NetInterface, ni),
        },
    }
}

async fn netif_create(State(app): State<App>, Path(node): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::NetInterface);
    let req: wire::NetInterfaceReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let ni = req.into_model()?;
        let name = ni.name.clone();
        c.create_net_interface(&node, ni)?;
        Ok(vec![
            ctx.success(
                rc::CREATED,
                format!("New net interface '{name}' on node '{node}' created."),
            )
            .with_ref("Node", node),
        ])
    })
    .await
}

async fn netif_modify(
    State(app): State<App>,
    Path((node, ni)): Path<(String, String)>,
    body: Body,
) -> Response {
    let ctx = Ctx::new(Op::Modify, ObjectKind::NetInterface);
    let req: wire::NetInterfaceReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.modify_net_interface(&node, &ni, &req.into_modify()?)?;
        Ok(vec![ctx.success(
            rc::MODIFIED,
            format!("Net interface '{ni}' on node '{node}' modified."),
        )])
    })
    .await
}

async fn netif_delete(
    State(app): State<App>,
    Path((node, ni)): Path<(String, String)>,
) -> Response {
    let ctx = Ctx::new(Op::Delete, ObjectKind::NetInterface);
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.delete_net_interface(&node, &ni)?;
        Ok(vec![ctx.success(
            rc::DELETED,
            format!("Net interface '{ni}' on node '{node}' deleted."),
        )])
    })
    .await
}

// ---- storage pools ----

fn pools_json(c: &Cluster, live: &LiveView, q: &Query, only_node: Option<&str>) -> Vec<Value> {
    c.nodes()
        .filter(|n| only_node.is_none_or(|o| o.eq_ignore_ascii_case(&n.name)))
        .filter(|n| q.names("nodes", &n.name))
        .flat_map(|n| n.storage_pools.values())
        .filter(|sp| q.names("storage_pools", &sp.storage_pool_name) && q.props(&sp.props))
        .map(|sp| wire::storage_pool(sp, live))
        .collect()
}

async fn node_pools_list(
    State(app): State<App>,
    Path(node): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let c = app.snapshot();
    if c.node(&node).is_none() {
        return not_found(
            Ctx::new(Op::Query, ObjectKind::StoragePool),
            ObjectKind::Node,
            node,
        );
    }
    let q = Query::new(q);
    ok_json(json!(q.page(pools_json(
        &c,
        &app.live().view(),
        &q,
        Some(&node)
    ))))
}

async fn pools_view(State(app): State<App>, RawQuery(q): RawQuery) -> Response {
    let q = Query::new(q);
    ok_json(json!(q.page(pools_json(
        &app.snapshot(),
        &app.live().view(),
        &q,
        None
    ))))
}

async fn pool_get(State(app): State<App>, Path((node, pool)): Path<(String, String)>) -> Response {
    let c = app.snapshot();
    let ctx = Ctx::new(Op::Query, ObjectKind::StoragePool);
    match c.node(&node) {
        None => not_found(ctx, ObjectKind::Node, node),
        Some(n) => match n.storage_pool(&pool) {
            Some(sp) => ok_json(wire::storage_pool(sp, &app.live().view())),
            None => not_found(ctx, ObjectKind::StoragePool, format!("{node}/{pool}")),
        },
    }
}

async fn pool_create(State(app): State<App>, Path(node): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::StoragePool);
    let req: wire::StoragePoolCreateReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let req = req.into_model()?;
        let name = req.name.clone();
        c.create_storage_pool(&node, req)?;
        let mut out = vec![
            ctx.success(
                rc::CREATED,
                format!("Storage pool '{name}' on node '{node}' created."),
            )
            .with_ref("StorPool", name.clone())
            .with_ref("Node", node.clone()),
        ];
        out.extend(offline_warnings(c, ctx, [&node]));
        Ok(out)
    })
    .await
}

async fn pool_modify(
    State(app): State<App>,
    Path((node, pool)): Path<(String, String)>,
    body: Body,
) -> Response {
    let ctx = Ctx::new(Op::Modify, ObjectKind::StoragePool);
    let req: wire::PropsModifyReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.modify_storage_pool(&node, &pool, &req.into_model())?;
        Ok(vec![ctx.success(
            rc::MODIFIED,
            format!("Storage pool '{pool}' on node '{node}' modified."),
        )])
    })
    .await
}

async fn pool_delete(
    State(app): State<App>,
    Path((node, pool)): Path<(String, String)>,
) -> Response {
    let ctx = Ctx::new(Op::Delete, ObjectKind::StoragePool);
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.delete_storage_pool(&node, &pool)?;
        Ok(vec![ctx.success(
            rc::DELETED,
            format!("Storage pool '{pool}' on node '{node}' deleted."),
        )])
    })
    .await
}

// ---- resource groups ----

async fn rgs_list(State(app): State<App>, RawQuery(q): RawQuery) -> Response {
    let q = Query::new(q);
    let c = app.snapshot();
    let v: Vec<Value> = c
        .resource_groups()
        .filter(|g| q.names("resource_groups", &g.name) && q.props(&g.props))
        .map(wire::resource_group)
        .collect();
    ok_json(json!(q.page(v)))
}

async fn rg_get(State(app): State<App>, Path(rg): Path<String>) -> Response {
    match app.snapshot().resource_group(&rg) {
        Some(g) => ok_json(wire::resource_group(g)),
        None => not_found(
            Ctx::new(Op::Query, ObjectKind::ResourceGroup),
            ObjectKind::ResourceGroup,
            rg,
        ),
    }
}

async fn rg_create(State(app): State<App>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::ResourceGroup);
    let req: wire::ResourceGroupCreateReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let req = req.into_model()?;
        let name = req.name.clone();
        c.create_resource_group(req)?;
        Ok(vec![
            ctx.success(rc::CREATED, format!("New resource group '{name}' created."))
                .with_ref("RscGrp", name),
        ])
    })
    .await
}

async fn rg_modify(State(app): State<App>, Path(rg): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Modify, ObjectKind::ResourceGroup);
    let req: wire::ResourceGroupModifyReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.modify_resource_group(&rg, &req.into_model()?)?;
        Ok(vec![
            ctx.success(rc::MODIFIED, format!("Resource group '{rg}' modified."))
                .with_ref("RscGrp", rg),
        ])
    })
    .await
}

async fn rg_delete(State(app): State<App>, Path(rg): Path<String>) -> Response {
    let ctx = Ctx::new(Op::Delete, ObjectKind::ResourceGroup);
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.delete_resource_group(&rg)?;
        Ok(vec![
            ctx.success(rc::DELETED, format!("Resource group '{rg}' deleted."))
                .with_ref("RscGrp", rg),
        ])
    })
    .await
}

async fn rg_spawn(State(app): State<App>, Path(rg): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::ResourceDefinition);
    let req: wire::SpawnReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let req = req.into_model()?;
        let name = req.resource_definition_name.clone();
        let sizes = req.volume_sizes.clone();
        let out = c.spawn(&rg, req)?;
        let mut rcs = vec![
            ctx.success(
                rc::CREATED,
                format!("New resource definition '{name}' created."),
            )
            .with_details(format!("TCP port {}", out.port))
            .with_ref("RscDfn", name.clone())
            .with_ref("RscGrp", rg.clone()),
        ];
        let vctx = Ctx::new(Op::Create, ObjectKind::VolumeDefinition);
        for (vnr, size) in out.volume_numbers.iter().zip(&sizes) {
            rcs.push(
                vctx.success(
                    rc::CREATED,
                    format!(
                        "New volume definition with number '{vnr}' of resource definition \
                         '{name}' created."
                    ),
                )
                .with_details(format!("size {size} KiB"))
                .with_ref("RscDfn", name.clone())
                .with_ref("VlmNr", vnr.to_string()),
            );
        }
        if let Some(p) = &out.placement {
            rcs.extend(placement_rcs(c, &name, p));
        }
        for note in &out.notes {
            rcs.push(ctx.info(rc::INFO_NO_RSC_SPAWNED, note.clone()));
        }
        Ok(rcs)
    })
    .await
}

fn size_info_entry(c: &Cluster, g: &model::ResourceGroup, over: &model::SelectFilter) -> Value {
    let (info, notes) = wire::size_info(c, &g.select_filter.merged(over));
    let ctx = Ctx::new(Op::Query, ObjectKind::ResourceGroup);
    let reports: Vec<ApiCallRc> = notes
        .into_iter()
        .map(|n| ctx.warn(rc::WARN_NOT_CONNECTED, n))
        .collect();
    json!({"space_info": info, "reports": reports})
}

async fn rg_size_info(State(app): State<App>, Path(rg): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Query, ObjectKind::ResourceGroup);
    let req: wire::SizeInfoReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let over = match req.select_filter.map(|f| f.into_model(None)).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return rc_reply(vec![ctx.model_error(&e)], StatusCode::OK),
    };
    let c = app.live_cluster();
    match c.resource_group(&rg) {
        Some(g) => ok_json(size_info_entry(&c, g, &over)),
        None => not_found(ctx, ObjectKind::ResourceGroup, rg),
    }
}

async fn all_size_info(State(app): State<App>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Query, ObjectKind::ResourceGroup);
    let req: wire::SizeInfoReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let over = match req.select_filter.map(|f| f.into_model(None)).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return rc_reply(vec![ctx.model_error(&e)], StatusCode::OK),
    };
    let c = app.live_cluster();
    let result: serde_json::Map<String, Value> = c
        .resource_groups()
        .map(|g| (g.name.clone(), size_info_entry(&c, g, &over)))
        .collect();
    ok_json(json!({"result": result, "reports": []}))
}

// ---- volume groups ----

async fn vgs_list(State(app): State<App>, Path(rg): Path<String>) -> Response {
    match app.snapshot().resource_group(&rg) {
        Some(g) => ok_json(json!(
            g.volume_groups
                .values()
                .map(wire::volume_group)
                .collect::<Vec<_>>()
        )),
        None => not_found(
            Ctx::new(Op::Query, ObjectKind::VolumeGroup),
            ObjectKind::ResourceGroup,
            rg,
        ),
    }
}

async fn vg_get(State(app): State<App>, Path((rg, n)): Path<(String, String)>) -> Response {
    let ctx = Ctx::new(Op::Query, ObjectKind::VolumeGroup);
    let n = match vnr(&n, ctx) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match app.snapshot().resource_group(&rg) {
        None => not_found(ctx, ObjectKind::ResourceGroup, rg),
        Some(g) => match g.volume_groups.get(&n) {
            Some(vg) => ok_json(wire::volume_group(vg)),
            None => not_found(ctx, ObjectKind::VolumeGroup, format!("{rg}/{n}")),
        },
    }
}

async fn vg_create(State(app): State<App>, Path(rg): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::VolumeGroup);
    let req: wire::VolumeGroupCreateReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let n = c.create_volume_group(&rg, req.into_model()?)?;
        Ok(vec![
            ctx.success(
                rc::CREATED,
                format!("New volume group with number '{n}' of resource group '{rg}' created."),
            )
            .with_ref("RscGrp", rg)
            .with_ref("VlmNr", n.to_string()),
        ])
    })
    .await
}

async fn vg_modify(
    State(app): State<App>,
    Path((rg, n)): Path<(String, String)>,
    body: Body,
) -> Response {
    let ctx = Ctx::new(Op::Modify, ObjectKind::VolumeGroup);
    let n = match vnr(&n, ctx) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let req: wire::VolumeDefinitionModifyReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        req.check()?;
        c.modify_volume_group(&rg, n, &req.props.into_model())?;
        Ok(vec![ctx.success(
            rc::MODIFIED,
            format!("Volume group '{n}' of resource group '{rg}' modified."),
        )])
    })
    .await
}

async fn vg_delete(State(app): State<App>, Path((rg, n)): Path<(String, String)>) -> Response {
    let ctx = Ctx::new(Op::Delete, ObjectKind::VolumeGroup);
    let n = match vnr(&n, ctx) {
        Ok(n) => n,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.delete_volume_group(&rg, n)?;
        Ok(vec![ctx.success(
            rc::DELETED,
            format!("Volume group '{n}' of resource group '{rg}' deleted."),
        )])
    })
    .await
}

// ---- resource definitions ----

async fn rds_list(State(app): State<App>, RawQuery(q): RawQuery) -> Response {
    let q = Query::new(q);
    let with_vds = q.flag("with_volume_definitions");
    let c = app.snapshot();
    let v: Vec<Value> = c
        .resource_definitions()
        .filter(|rd| q.names("resource_definitions", &rd.name) && q.props(&rd.props))
        .map(|rd| wire::resource_definition(rd, with_vds))
        .collect();
    ok_json(json!(q.page(v)))
}

async fn rd_get(State(app): State<App>, Path(rsc): Path<String>) -> Response {
    match app.snapshot().resource_definition(&rsc) {
        Some(rd) => ok_json(wire::resource_definition(rd, true)),
        None => not_found(
            Ctx::new(Op::Query, ObjectKind::ResourceDefinition),
            ObjectKind::ResourceDefinition,
            rsc,
        ),
    }
}

async fn rd_create(State(app): State<App>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::ResourceDefinition);
    let req: wire::ResourceDefinitionCreateReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let req = req.into_model()?;
        let name = req.name.clone();
        let port = c.create_resource_definition(req)?;
        Ok(vec![
            ctx.success(
                rc::CREATED,
                format!("New resource definition '{name}' created."),
            )
            .with_details(format!("TCP port {port}"))
            .with_ref("RscDfn", name),
        ])
    })
    .await
}

async fn rd_modify(State(app): State<App>, Path(rsc): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Modify, ObjectKind::ResourceDefinition);
    let req: wire::ResourceDefinitionModifyReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.modify_resource_definition(&rsc, &req.into_model()?)?;
        Ok(vec![
            ctx.success(
                rc::MODIFIED,
                format!("Resource definition '{rsc}' modified."),
            )
            .with_ref("RscDfn", rsc),
        ])
    })
    .await
}

async fn rd_delete(State(app): State<App>, Path(rsc): Path<String>) -> Response {
    let ctx = Ctx::new(Op::Delete, ObjectKind::ResourceDefinition);
    let live = app.live().view();
    mutate(app, ctx, StatusCode::OK, move |c| {
        if let Some(rd) = c.resource_definition(&rsc) {
            let users: Vec<&str> = rd
                .resources
                .values()
                .filter(|r| in_use(&live, &rd.name, &r.node_name))
                .map(|r| r.node_name.as_str())
                .collect();
            if !users.is_empty() {
                return Err(in_use_error(
                    ObjectKind::ResourceDefinition,
                    &rd.name,
                    &users,
                ));
            }
        }
        let nodes = c.delete_resource_definition(&rsc)?;
        let mut out = vec![
            ctx.success(rc::DELETED, format!("Resource definition '{rsc}' deleted."))
                .with_ref("RscDfn", rsc.clone()),
        ];
        let rctx = Ctx::new(Op::Delete, ObjectKind::Resource);
        for n in &nodes {
            out.push(
                rctx.success(
                    rc::DELETED,
                    format!("Resource '{rsc}' on node '{n}' deleted."),
                )
                .with_ref("Node", n.clone()),
            );
        }
        Ok(out)
    })
    .await
}

async fn rd_autoplace(State(app): State<App>, Path(rsc): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::Resource);
    let req: wire::AutoPlaceReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let now = c
            .resource_definition(&rsc)
            .map_or(0, model::ResourceDefinition::diskful_count);
        let filter = req.into_model(now)?;
        let p = c.autoplace(&rsc, &filter)?;
        let mut out = placement_rcs(c, &rsc, &p);
        if p.diskful.is_empty() && p.diskless.is_empty() {
            out.push(ctx.info(
                0,
                format!("Resource '{rsc}' is already placed as the filter asks; nothing added"),
            ));
        }
        Ok(out)
    })
    .await
}

// ---- volume definitions ----

async fn vds_list(State(app): State<App>, Path(rsc): Path<String>) -> Response {
    match app.snapshot().resource_definition(&rsc) {
        Some(rd) => ok_json(json!(
            rd.volume_definitions
                .values()
                .map(wire::volume_definition)
                .collect::<Vec<_>>()
        )),
        None => not_found(
            Ctx::new(Op::Query, ObjectKind::VolumeDefinition),
            ObjectKind::ResourceDefinition,
            rsc,
        ),
    }
}

async fn vd_get(State(app): State<App>, Path((rsc, n)): Path<(String, String)>) -> Response {
    let ctx = Ctx::new(Op::Query, ObjectKind::VolumeDefinition);
    let n = match vnr(&n, ctx) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match app.snapshot().resource_definition(&rsc) {
        None => not_found(ctx, ObjectKind::ResourceDefinition, rsc),
        Some(rd) => match rd.volume_definitions.get(&n) {
            Some(vd) => ok_json(wire::volume_definition(vd)),
            None => not_found(ctx, ObjectKind::VolumeDefinition, format!("{rsc}/{n}")),
        },
    }
}

async fn vd_create(State(app): State<App>, Path(rsc): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::VolumeDefinition);
    let req: wire::VolumeDefinitionCreateReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let n = c.create_volume_definition(&rsc, req.into_model()?)?;
        Ok(vec![
            ctx.success(
                rc::CREATED,
                format!(
                    "New volume definition with number '{n}' of resource definition '{rsc}' \
                     created."
                ),
            )
            .with_ref("RscDfn", rsc)
            .with_ref("VlmNr", n.to_string()),
        ])
    })
    .await
}

async fn vd_modify(
    State(app): State<App>,
    Path((rsc, n)): Path<(String, String)>,
    body: Body,
) -> Response {
    let ctx = Ctx::new(Op::Modify, ObjectKind::VolumeDefinition);
    let n = match vnr(&n, ctx) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let req: wire::VolumeDefinitionModifyReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        req.check()?;
        if let Some(size) = req.size_kib {
            c.resize_volume_definition(&rsc, n, size)?;
        }
        let m = req.props.into_model();
        if !m.is_empty() {
            c.modify_volume_definition(&rsc, n, &m)?;
        }
        let mut out = vec![
            ctx.success(
                rc::MODIFIED,
                format!("Volume definition '{n}' of resource definition '{rsc}' modified."),
            )
            .with_ref("RscDfn", rsc.clone())
            .with_ref("VlmNr", n.to_string()),
        ];
        if req.size_kib.is_some() {
            let nodes: Vec<String> = c
                .resource_definition(&rsc)
                .map(|rd| rd.resources.values().map(|r| r.node_name.clone()).collect())
                .unwrap_or_default();
            out.extend(offline_warnings(c, ctx, &nodes));
        }
        Ok(out)
    })
    .await
}

async fn vd_delete(State(app): State<App>, Path((rsc, n)): Path<(String, String)>) -> Response {
    let ctx = Ctx::new(Op::Delete, ObjectKind::VolumeDefinition);
    let n = match vnr(&n, ctx) {
        Ok(n) => n,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        c.delete_volume_definition(&rsc, n)?;
        Ok(vec![ctx.success(
            rc::DELETED,
            format!("Volume definition '{n}' of resource definition '{rsc}' deleted."),
        )])
    })
    .await
}

// ---- resources ----

/// The resources a query selects, in order.
fn resources_selected<'c>(
    c: &'c Cluster,
    q: &Query,
    only_rsc: Option<&str>,
) -> Vec<(&'c model::ResourceDefinition, &'c model::Resource)> {
    c.resource_definitions()
        .filter(|rd| only_rsc.is_none_or(|o| o.eq_ignore_ascii_case(&rd.name)))
        .filter(|rd| q.names("resources", &rd.name))
        .flat_map(|rd| rd.resources.values().map(move |r| (rd, r)))
        .filter(|(_, r)| q.names("nodes", &r.node_name) && q.props(&r.props))
        .filter(|(_, r)| {
            let pools = q.list("storage_pools");
            pools.is_empty()
                || r.volumes.values().any(|v| {
                    pools
                        .iter()
                        .any(|p| p.eq_ignore_ascii_case(&v.storage_pool_name))
                })
        })
        .collect()
}

/// A JSON array of the selected resources, each turned into JSON and written out
/// before the next: a list of thousands never exists as one tree of values.
fn resources_response(c: &Cluster, live: &LiveView, q: &Query, only_rsc: Option<&str>) -> Response {
    let page = q.page(resources_selected(c, q, only_rsc));
    let mut body = Vec::with_capacity(page.len() * 1024 + 2);
    body.push(b'[');
    for (i, (rd, r)) in page.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let obs = live.resource(&r.node_name, &rd.name);
        if serde_json::to_writer(&mut body, &wire::resource(rd, r, obs)).is_err() {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    body.push(b']');
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn rscs_view(State(app): State<App>, RawQuery(q): RawQuery) -> Response {
    let q = Query::new(q);
    resources_response(&app.snapshot(), &app.live().view(), &q, None)
}

async fn rscs_list(
    State(app): State<App>,
    Path(rsc): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let c = app.snapshot();
    if c.resource_definition(&rsc).is_none() {
        return not_found(
            Ctx::new(Op::Query, ObjectKind::Resource),
            ObjectKind::ResourceDefinition,
            rsc,
        );
    }
    let q = Query::new(q);
    resources_response(&c, &app.live().view(), &q, Some(&rsc))
}

async fn rsc_get(State(app): State<App>, Path((rsc, node)): Path<(String, String)>) -> Response {
    let c = app.snapshot();
    let ctx = Ctx::new(Op::Query, ObjectKind::Resource);
    match c.resource_definition(&rsc) {
        None => not_found(ctx, ObjectKind::ResourceDefinition, rsc),
        Some(rd) => match rd.resource(&node) {
            Some(r) => {
                let live = app.live().view();
                ok_json(wire::resource(rd, r, live.resource(&r.node_name, &rd.name)))
            }
            None => not_found(ctx, ObjectKind::Resource, format!("{rsc} on node {node}")),
        },
    }
}

fn create_resources(
    c: &mut Cluster,
    ctx: Ctx,
    rsc: &str,
    reqs: Vec<model::ResourceCreate>,
) -> Result<Vec<ApiCallRc>, ModelError> {
    if reqs.is_empty() {
        return Err(ModelError::InvalidValue {
            field: "resources".into(),
            reason: "the request names no resource to create".into(),
            correction: "send a list of {\"resource\": {\"node_name\": ...}} objects".into(),
        });
    }
    let mut out = Vec::new();
    let mut nodes = Vec::new();
    for req in reqs {
        let node = req.node.clone();
        let diskless = req.diskless;
        let o = c.create_resource(req)?;
        out.push(
            ctx.success(
                rc::CREATED,
                format!(
                    "New {}resource '{rsc}' on node '{node}' registered.",
                    if diskless { "diskless " } else { "" }
                ),
            )
            .with_ref("RscDfn", rsc)
            .with_ref("Node", node.clone()),
        );
        out.extend(outcome_rcs(rsc, &o));
        nodes.push(node);
    }
    out.extend(offline_warnings(c, ctx, &nodes));
    Ok(out)
}

async fn rscs_create(State(app): State<App>, Path(rsc): Path<String>, body: Body) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::Resource);
    let reqs: Vec<wire::ResourceCreateReq> = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let reqs = reqs
            .into_iter()
            .map(|r| r.into_model(&rsc, None))
            .collect::<Result<Vec<_>, _>>()?;
        create_resources(c, ctx, &rsc, reqs)
    })
    .await
}

async fn rsc_create_one(
    State(app): State<App>,
    Path((rsc, node)): Path<(String, String)>,
    body: Body,
) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::Resource);
    let req: wire::ResourceCreateReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::CREATED, move |c| {
        let req = req.into_model(&rsc, Some(&node))?;
        create_resources(c, ctx, &rsc, vec![req])
    })
    .await
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct ResourceModifyReq {
    #[serde(flatten)]
    props: wire::PropsModifyReq,
    drbd_tiebreaker: Option<bool>,
    drbd_client: Option<bool>,
}

async fn rsc_modify(
    State(app): State<App>,
    Path((rsc, node)): Path<(String, String)>,
    body: Body,
) -> Response {
    let ctx = Ctx::new(Op::Modify, ObjectKind::Resource);
    let req: ResourceModifyReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        if req.drbd_tiebreaker.is_some() || req.drbd_client.is_some() {
            return Err(ModelError::InvalidValue {
                field: "drbd_tiebreaker".into(),
                reason: "tandem chooses the tiebreaker itself".into(),
                correction: "leave drbd_tiebreaker and drbd_client out".into(),
            });
        }
        c.modify_resource(&rsc, &node, &req.props.into_model())?;
        Ok(vec![ctx.success(
            rc::MODIFIED,
            format!("Resource '{rsc}' on node '{node}' modified."),
        )])
    })
    .await
}

async fn rsc_delete(
    State(app): State<App>,
    Path((rsc, node)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let ctx = Ctx::new(Op::Delete, ObjectKind::Resource);
    let keep = Query::new(q).flag("keep_tiebreaker");
    let live = app.live().view();
    mutate(app, ctx, StatusCode::OK, move |c| {
        if let Some(r) = c.resource(&rsc, &node)
            && in_use(&live, &r.name, &r.node_name)
        {
            return Err(in_use_error(
                ObjectKind::Resource,
                &format!("{} on node {}", r.name, r.node_name),
                &[r.node_name.as_str()],
            ));
        }
        let o = c.delete_resource(&rsc, &node, keep)?;
        let mut out = vec![
            if o.kept_as_tiebreaker {
                ctx.info(
                    rc::INFO_TIE_BREAKER_CREATED,
                    format!(
                        "Resource '{rsc}' on node '{node}' stays as the diskless tie breaker \
                     (keep_tiebreaker)"
                    ),
                )
            } else {
                ctx.success(
                    rc::DELETED,
                    format!("Resource '{rsc}' on node '{node}' deleted."),
                )
            }
            .with_ref("RscDfn", rsc.clone())
            .with_ref("Node", node.clone()),
        ];
        out.extend(outcome_rcs(&rsc, &o));
        Ok(out)
    })
    .await
}

async fn rsc_make_available(
    State(app): State<App>,
    Path((rsc, node)): Path<(String, String)>,
    body: Body,
) -> Response {
    let ctx = Ctx::new(Op::Create, ObjectKind::Resource);
    let req: wire::MakeAvailableReq = match parse(body, ctx) {
        Ok(r) => r,
        Err(r) => return r,
    };
    mutate(app, ctx, StatusCode::OK, move |c| {
        let before = c.resource(&rsc, &node).cloned();
        let o = c.make_available(&rsc, &node, req.diskful)?;
        let after = c.resource(&rsc, &node).cloned();
        let mut out = Vec::new();
        if before == after {
            out.push(ctx.info(
                0,
                format!("Resource '{rsc}' is already available on node '{node}'"),
            ));
        } else {
            let diskless = after.as_ref().is_some_and(model::Resource::is_diskless);
            out.push(
                ctx.success(
                    rc::CREATED,
                    format!(
                        "Resource '{rsc}' made available on node '{node}' ({})",
                        if diskless { "diskless" } else { "diskful" }
                    ),
                )
                .with_ref("RscDfn", rsc.clone())
                .with_ref("Node", node.clone()),
            );
            out.extend(offline_warnings(c, ctx, [&node]));
        }
        out.extend(
            outcome_rcs(&rsc, &o)
                .into_iter()
                .filter(|r| !r.message.contains("already available")),
        );
        Ok(out)
    })
    .await
}

// ---- satellites ----

/// Whether the satellite of `node` reports `rsc` Primary there (a client uses it).
fn in_use(live: &LiveView, rsc: &str, node: &str) -> bool {
    matches!(
        live.resource(node, rsc),
        RscObs::Reported(o) if o.role.as_deref().is_some_and(|r| r.eq_ignore_ascii_case("Primary"))
    )
}

fn in_use_error(kind: ObjectKind, name: &str, nodes: &[&str]) -> ModelError {
    let list = nodes.join(", ");
    ModelError::InUse {
        kind,
        name: name.to_owned(),
        reason: format!(
            "it is Primary (in use by a VM or another client) on node(s) {list}, as the \
             satellite reports"
        ),
        correction: format!(
            "stop what uses it on {list} (shut the VM down or move it, close the NBD \
             client), wait until 'tandem resource list' shows it Unused there, then delete again"
        ),
    }
}

async fn satellites_list(State(app): State<App>) -> Response {
    let c = app.snapshot();
    ok_json(json!(wire::satellites(&c, &app.live().view())))
}
