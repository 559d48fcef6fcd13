//! `tandem` as a client of the controller's LINSTOR REST API: the linstor client's
//! objects, verbs, aliases and main flags (docs/cli.md).

pub mod conn;
mod drbd;
mod output;
pub mod size;
mod table;

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use conn::{Api, seg};
use output::Level;
use table::Table;

/// linstor-client's exit codes (`linstor_client/consts.py` `ExitCode`).
const EXIT_UNKNOWN: u8 = 1;
const EXIT_ARGUMENTS: u8 = 2;
const EXIT_API_ERROR: u8 = 10;
const EXIT_CONNECTION: u8 = 20;

/// Flags of the client commands (they may come before or after the command).
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Controllers to try in order, HOST[:PORT],... (default port 3370). Default: the
    /// client config file, else localhost:3370.
    #[arg(
        long,
        global = true,
        env = "LS_CONTROLLERS",
        value_name = "HOST[:PORT],..."
    )]
    pub controllers: Option<String>,
    /// Print the JSON the controller answered instead of tables and message blocks.
    #[arg(short = 'm', long, global = true)]
    pub machine_readable: bool,
    /// Draw tables with ASCII instead of UTF-8 box characters.
    #[arg(long, global = true)]
    pub no_utf8: bool,
    /// Accepted for compatibility; tandem prints no colors.
    #[arg(long, global = true)]
    pub no_color: bool,
    /// Exit non-zero on warnings too.
    #[arg(long, global = true)]
    pub warn_as_error: bool,
    /// Ignore the client config files.
    #[arg(long, global = true)]
    pub disable_config: bool,
    /// Seconds to wait for the controller's answer.
    #[arg(
        short = 't',
        long,
        global = true,
        default_value_t = 300,
        value_name = "SECS"
    )]
    pub timeout: u64,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Nodes: create, list, delete, lost, properties, network interfaces.
    #[command(visible_alias = "n")]
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Storage pools on nodes.
    #[command(visible_alias = "sp")]
    StoragePool {
        #[command(subcommand)]
        cmd: SpCmd,
    },
    /// Resource groups: placement rules, DRBD options, spawning resources.
    #[command(visible_alias = "rg")]
    ResourceGroup {
        #[command(subcommand)]
        cmd: RgCmd,
    },
    /// Volume groups of a resource group.
    #[command(visible_alias = "vg")]
    VolumeGroup {
        #[command(subcommand)]
        cmd: VgCmd,
    },
    /// Resource definitions.
    #[command(visible_alias = "rd")]
    ResourceDefinition {
        #[command(subcommand)]
        cmd: RdCmd,
    },
    /// Volume definitions of a resource definition.
    #[command(visible_alias = "vd")]
    VolumeDefinition {
        #[command(subcommand)]
        cmd: VdCmd,
    },
    /// Resources: a resource definition's replicas on nodes.
    #[command(visible_alias = "r")]
    Resource {
        #[command(subcommand)]
        cmd: RCmd,
    },
}

/// `tandem controller <verb>` (without a verb, `tandem controller` runs the daemon).
#[derive(Subcommand, Debug)]
pub enum ControllerCmd {
    /// The controller's version and REST API version.
    Version,
    /// The controller's properties.
    #[command(visible_alias = "lp")]
    ListProperties,
    /// Set a controller property (no VALUE: delete it).
    #[command(visible_alias = "sp")]
    SetProperty { key: String, value: Option<String> },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Register a node: NAME [IP] (IP default: NAME resolved).
    #[command(visible_alias = "c")]
    Create {
        /// satellite, combined, controller or auxiliary.
        #[arg(long, default_value = "satellite")]
        node_type: String,
        /// The satellite's port (default 3366 plain, 3367 ssl).
        #[arg(short = 'p', long)]
        port: Option<u16>,
        #[arg(long, default_value = "plain", value_parser = ["plain", "ssl", "Plain", "SSL", "Ssl"])]
        communication_type: String,
        #[arg(long, default_value = "default")]
        interface_name: String,
        name: String,
        ip: Option<String>,
    },
    /// List nodes.
    #[command(visible_alias = "l")]
    List {
        /// Only these nodes.
        #[arg(short = 'n', long, value_delimiter = ',', num_args = 1)]
        nodes: Vec<String>,
        /// Only nodes with this property (KEY or KEY=VALUE).
        #[arg(long, num_args = 1)]
        props: Vec<String>,
    },
    /// Delete nodes (refused while they hold resources).
    #[command(visible_alias = "d")]
    Delete {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Delete a node that is gone for good, with its resources.
    #[command(visible_alias = "lo")]
    Lost { node: String },
    /// Set a node property (no VALUE: delete it).
    #[command(visible_alias = "sp")]
    SetProperty {
        node: String,
        key: String,
        value: Option<String>,
    },
    /// A node's properties.
    #[command(visible_alias = "lp")]
    ListProperties { node: String },
    /// A node's network interfaces.
    #[command(visible_alias = "i")]
    Interface {
        #[command(subcommand)]
        cmd: IfCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum IfCmd {
    /// Add a network interface: NODE NAME IP.
    #[command(visible_alias = "c")]
    Create {
        #[arg(short = 'p', long)]
        port: Option<u16>,
        #[arg(long, default_value = "plain", value_parser = ["plain", "ssl", "Plain", "SSL", "Ssl"])]
        communication_type: String,
        /// Make it the interface the controller uses.
        #[arg(long)]
        active: bool,
        node: String,
        name: String,
        ip: String,
    },
    /// List a node's network interfaces.
    #[command(visible_alias = "l")]
    List { node: String },
    /// Delete network interfaces: NODE NAME...
    #[command(visible_alias = "d")]
    Delete {
        node: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum SpKind {
    Diskless,
    File,
    Filethin,
    Lvm,
    Lvmthin,
    Zfs,
    Zfsthin,
}

impl SpKind {
    fn provider(self) -> &'static str {
        match self {
            SpKind::Diskless => "DISKLESS",
            SpKind::File => "FILE",
            SpKind::Filethin => "FILE_THIN",
            SpKind::Lvm => "LVM",
            SpKind::Lvmthin => "LVM_THIN",
            SpKind::Zfs => "ZFS",
            SpKind::Zfsthin => "ZFS_THIN",
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum SpCmd {
    /// Create a storage pool: KIND NODE NAME DRIVER-POOL (e.g. zfsthin pve01 pool rpool/data).
    #[command(visible_alias = "c")]
    Create {
        /// Shared space name, for pools several nodes see.
        #[arg(long)]
        shared_space: Option<String>,
        #[arg(long)]
        external_locking: bool,
        kind: SpKind,
        node: String,
        name: String,
        /// The volume group, thin pool (vg/lv), zpool or directory (not for diskless).
        driver_pool: Option<String>,
    },
    /// List storage pools.
    #[command(visible_alias = "l")]
    List {
        #[arg(short = 'n', long, value_delimiter = ',', num_args = 1)]
        nodes: Vec<String>,
        #[arg(short = 's', long, value_delimiter = ',', num_args = 1)]
        storage_pools: Vec<String>,
    },
    /// Delete a storage pool: NODE NAME.
    #[command(visible_alias = "d")]
    Delete { node: String, name: String },
}

/// The auto-placer's rules (`AutoSelectFilter`).
#[derive(Args, Debug, Default)]
pub struct Placement {
    /// Diskful replicas to place.
    #[arg(long)]
    place_count: Option<u32>,
    /// Storage pools to place in (repeat or comma-separate).
    #[arg(short = 's', long, value_delimiter = ',', num_args = 1)]
    storage_pool: Vec<String>,
    /// Diskless storage pools for diskless replicas.
    #[arg(long, value_delimiter = ',', num_args = 1)]
    diskless_storage_pool: Vec<String>,
    /// Not on nodes with these resources.
    #[arg(long, value_delimiter = ',', num_args = 1)]
    do_not_place_with: Vec<String>,
    /// Not on nodes with resources matching this regex.
    #[arg(long)]
    do_not_place_with_regex: Option<String>,
    /// Only nodes that agree on these properties (Aux/...).
    #[arg(long, value_delimiter = ',', num_args = 1)]
    replicas_on_same: Vec<String>,
    /// Only nodes that differ in these properties (Aux/...).
    #[arg(long, value_delimiter = ',', num_args = 1)]
    replicas_on_different: Vec<String>,
    /// Put a diskless replica on every other node ([true|false], alone: true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    diskless_on_remaining: Option<bool>,
    /// Layers, comma-separated (tandem: drbd,storage).
    #[arg(short = 'l', long, value_delimiter = ',', num_args = 1)]
    layer_list: Vec<String>,
    /// Storage providers allowed (LVM, LVM_THIN, ZFS, ZFS_THIN, FILE, FILE_THIN).
    #[arg(long, value_delimiter = ',', num_args = 1)]
    providers: Vec<String>,
}

impl Placement {
    fn is_empty(&self) -> bool {
        self.place_count.is_none()
            && self.storage_pool.is_empty()
            && self.diskless_storage_pool.is_empty()
            && self.do_not_place_with.is_empty()
            && self.do_not_place_with_regex.is_none()
            && self.replicas_on_same.is_empty()
            && self.replicas_on_different.is_empty()
            && self.diskless_on_remaining.is_none()
            && self.layer_list.is_empty()
            && self.providers.is_empty()
    }

    fn filter(&self) -> Value {
        let mut f = serde_json::Map::new();
        if let Some(n) = self.place_count {
            f.insert("place_count".into(), json!(n));
        }
        let lists = [
            ("storage_pool_list", &self.storage_pool),
            ("storage_pool_diskless_list", &self.diskless_storage_pool),
            ("not_place_with_rsc", &self.do_not_place_with),
            ("replicas_on_same", &self.replicas_on_same),
            ("replicas_on_different", &self.replicas_on_different),
        ];
        for (k, v) in lists {
            if !v.is_empty() {
                f.insert(k.into(), json!(v));
            }
        }
        if let Some(r) = &self.do_not_place_with_regex {
            f.insert("not_place_with_rsc_regex".into(), json!(r));
        }
        if let Some(d) = self.diskless_on_remaining {
            f.insert("diskless_on_remaining".into(), json!(d));
        }
        if !self.layer_list.is_empty() {
            let l: Vec<String> = self.layer_list.iter().map(|s| s.to_uppercase()).collect();
            f.insert("layer_stack".into(), json!(l));
        }
        if !self.providers.is_empty() {
            let l: Vec<String> = self.providers.iter().map(|s| s.to_uppercase()).collect();
            f.insert("provider_list".into(), json!(l));
        }
        Value::Object(f)
    }
}

#[derive(Subcommand, Debug)]
pub enum RgCmd {
    /// Create a resource group.
    #[command(visible_alias = "c")]
    Create {
        #[command(flatten)]
        placement: Placement,
        #[arg(short = 'd', long)]
        description: Option<String>,
        #[arg(long)]
        peer_slots: Option<u8>,
        name: String,
    },
    /// Change a resource group's placement rules or description.
    #[command(visible_alias = "m")]
    Modify {
        #[command(flatten)]
        placement: Placement,
        #[arg(short = 'd', long)]
        description: Option<String>,
        #[arg(long)]
        peer_slots: Option<u8>,
        name: String,
    },
    /// List resource groups.
    #[command(visible_alias = "l")]
    List {
        #[arg(short = 'r', long, value_delimiter = ',', num_args = 1)]
        resource_groups: Vec<String>,
    },
    /// Delete a resource group (refused while definitions use it).
    #[command(visible_alias = "d")]
    Delete { name: String },
    /// Create a resource definition from the group and place it: RG RD SIZE...
    #[command(name = "spawn-resources", visible_alias = "spawn")]
    Spawn {
        /// Place what can be placed even if not all replicas fit.
        #[arg(short = 'p', long)]
        partial: bool,
        /// Only create the definitions, place nothing.
        #[arg(short = 'd', long)]
        definition_only: bool,
        #[command(flatten)]
        placement: Placement,
        resource_group: String,
        resource_definition: String,
        /// One size per volume, e.g. 10G, 500MiB (no unit: GiB).
        sizes: Vec<String>,
    },
    /// Set DRBD options on the group: [--OPTION VALUE | --unset-OPTION]... RG
    #[command(name = "drbd-options", visible_alias = "opt")]
    DrbdOptions {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Set a property (no VALUE: delete it).
    #[command(visible_alias = "sp")]
    SetProperty {
        name: String,
        key: String,
        value: Option<String>,
    },
    /// A group's properties.
    #[command(visible_alias = "lp")]
    ListProperties { name: String },
}

#[derive(Subcommand, Debug)]
pub enum VgCmd {
    /// Add a volume group to a resource group.
    #[command(visible_alias = "c")]
    Create {
        /// Volume number (default: the next free one).
        #[arg(short = 'n', long)]
        vlmnr: Option<u32>,
        /// Sizes are gross (include metadata).
        #[arg(long)]
        gross: bool,
        resource_group: String,
    },
    /// List a resource group's volume groups.
    #[command(visible_alias = "l")]
    List { resource_group: String },
    /// Delete a volume group: RG VOLUME-NR.
    #[command(visible_alias = "d")]
    Delete {
        resource_group: String,
        volume_nr: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum RdCmd {
    /// Create a resource definition.
    #[command(visible_alias = "c")]
    Create {
        /// The resource group (default DfltRscGrp).
        #[arg(long)]
        resource_group: Option<String>,
        /// TCP port (default: the next free one).
        #[arg(short = 'p', long)]
        port: Option<u16>,
        name: String,
    },
    /// List resource definitions.
    #[command(visible_alias = "l")]
    List {
        #[arg(short = 'r', long, value_delimiter = ',', num_args = 1)]
        resource_definitions: Vec<String>,
    },
    /// Delete a resource definition with its resources.
    #[command(visible_alias = "d")]
    Delete { name: String },
    /// Place a definition's replicas by the given rules (or its group's).
    #[command(name = "auto-place", visible_alias = "ap")]
    AutoPlace {
        #[command(flatten)]
        placement: Placement,
        name: String,
    },
    /// Set DRBD options on the definition: [--OPTION VALUE | --unset-OPTION]... RD
    #[command(name = "drbd-options", visible_alias = "opt")]
    DrbdOptions {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Set a property (no VALUE: delete it).
    #[command(visible_alias = "sp")]
    SetProperty {
        name: String,
        key: String,
        value: Option<String>,
    },
    /// A definition's properties.
    #[command(visible_alias = "lp")]
    ListProperties { name: String },
}

#[derive(Subcommand, Debug)]
pub enum VdCmd {
    /// Add a volume: RD SIZE (e.g. 10G; no unit: GiB).
    #[command(visible_alias = "c")]
    Create {
        #[arg(long)]
        storage_pool: Option<String>,
        #[arg(short = 'n', long)]
        vlmnr: Option<u32>,
        #[arg(long)]
        gross: bool,
        resource_definition: String,
        size: String,
    },
    /// List volume definitions.
    #[command(visible_alias = "l")]
    List {
        #[arg(short = 'r', long, value_delimiter = ',', num_args = 1)]
        resource_definitions: Vec<String>,
    },
    /// Grow a volume: RD VOLUME-NR SIZE.
    #[command(name = "set-size", visible_alias = "size")]
    SetSize {
        resource_definition: String,
        volume_nr: u32,
        size: String,
    },
    /// Delete a volume definition: RD VOLUME-NR.
    #[command(visible_alias = "d")]
    Delete {
        resource_definition: String,
        volume_nr: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum RCmd {
    /// Create replicas: NODE... RD, or --auto-place N RD.
    #[command(visible_alias = "c")]
    Create {
        /// Storage pool(s) for diskful replicas.
        #[arg(short = 's', long, value_delimiter = ',', num_args = 1)]
        storage_pool: Vec<String>,
        /// Diskless replicas (DRBD clients).
        #[arg(long, visible_alias = "diskless")]
        drbd_diskless: bool,
        /// Let the placer choose N nodes (or +N more) instead of naming nodes.
        #[arg(long, value_name = "N|+N")]
        auto_place: Option<String>,
        /// With --auto-place: a diskless replica on every other node.
        #[arg(long, num_args = 0..=1, default_missing_value = "true",
              value_parser = clap::builder::BoolishValueParser::new())]
        diskless_on_remaining: Option<bool>,
        /// NODE... RD
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List resources.
    #[command(visible_alias = "l")]
    List {
        #[arg(short = 'r', long, value_delimiter = ',', num_args = 1)]
        resources: Vec<String>,
        #[arg(short = 'n', long, value_delimiter = ',', num_args = 1)]
        nodes: Vec<String>,
    },
    /// List volumes of resources.
    #[command(name = "list-volumes", visible_alias = "lv")]
    ListVolumes {
        #[arg(short = 'r', long, value_delimiter = ',', num_args = 1)]
        resources: Vec<String>,
        #[arg(short = 'n', long, value_delimiter = ',', num_args = 1)]
        nodes: Vec<String>,
    },
    /// Make a resource available on a node: NODE RD. An existing diskless replica
    /// (a tiebreaker too) is kept or, with --diskful, given a disk; otherwise a new
    /// replica is placed there.
    #[command(name = "make-available", visible_alias = "mkavail")]
    MakeAvailable {
        /// Want a replica with a disk there.
        #[arg(long)]
        diskful: bool,
        node: String,
        resource: String,
    },
    /// Delete replicas: NODE... RD.
    #[command(visible_alias = "d")]
    Delete {
        /// Keep a tiebreaker in place of a deleted diskless replica.
        #[arg(long)]
        keep_tiebreaker: bool,
        #[arg(required = true, num_args = 2..)]
        names: Vec<String>,
    },
}

/// An error in what the user typed (exit 2), found before anything was sent.
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

fn kib(text: &str) -> Result<u64> {
    size::parse_kib(text).map_err(|e| usage(e.to_string()))
}

/// One command's state: the connection (made on first use) and the ApiCallRc entries.
struct Ctx<'a> {
    g: &'a Global,
    api: OnceCell<Api>,
    replies: Vec<Value>,
}

impl<'a> Ctx<'a> {
    fn api(&self) -> Result<&Api> {
        if let Some(a) = self.api.get() {
            return Ok(a);
        }
        let list = conn::resolve(self.g.controllers.as_deref(), !self.g.disable_config)
            .map_err(|e| usage(format!("{e:#}")))?;
        let api = Api::connect(&list, Duration::from_secs(self.g.timeout.max(1)))?;
        Ok(self.api.get_or_init(|| api))
    }

    /// Keeps the answer's ApiCallRc entries; false if one is an error (stop there).
    fn take(&mut self, reply: conn::Reply) -> bool {
        match output::rc_list(&reply.body) {
            Some(list) => self.replies.extend(list.iter().cloned()),
            None if reply.status < 300 => {}
            None => self.replies.push(output::local_error(
                &format!(
                    "the controller answered HTTP {} without an ApiCallRc list",
                    reply.status
                ),
                Some(&reply.body.to_string()),
                None,
            )),
        }
        output::worst(&self.replies) != Some(Level::Error)
    }

    fn mutate(&mut self, method: &str, path: &str, body: Option<Value>) -> Result<bool> {
        let reply = self.api()?.send(method, path, body.as_ref())?;
        Ok(self.take(reply))
    }

    /// A list endpoint: the objects, or None after keeping the error entries.
    fn list(&mut self, path: &str, query: &[(&str, String)]) -> Result<Option<Vec<Value>>> {
        let reply = self.api()?.get(path, query)?;
        if reply.status == 200
            && let Value::Array(a) = reply.body
        {
            return Ok(Some(a));
        }
        self.take(reply);
        Ok(None)
    }

    /// A single-object GET: the object, or None after keeping the error entries.
    fn object(&mut self, path: &str) -> Result<Option<Value>> {
        let reply = self.api()?.get(path, &[])?;
        if reply.status == 200 && reply.body.is_object() {
            return Ok(Some(reply.body));
        }
        self.take(reply);
        Ok(None)
    }

    /// Prints a list: `[[objects]]` with -m (as linstor-client's output version v1),
    /// else the table.
    fn show(&self, objects: &[Value], table: impl FnOnce() -> Result<Table>) -> Result<()> {
        if self.g.machine_readable {
            outln!("{}", serde_json::to_string_pretty(&json!([objects]))?);
        } else {
            out!("{}", table()?.render(!self.g.no_utf8));
        }
        Ok(())
    }

    /// Status lines printed under a table (not with -m): what is wrong and what to do.
    fn notes(&self, lines: &[String]) {
        if self.g.machine_readable {
            return;
        }
        let mut seen = std::collections::BTreeSet::new();
        for l in lines {
            if seen.insert(l.as_str()) {
                outln!("{l}");
            }
        }
    }

    /// The controller's satellite links (`GET /v1/satellites`); empty when the
    /// controller does not serve it or fails: the notes are extra.
    fn satellites(&self) -> Vec<Value> {
        if self.g.machine_readable {
            return Vec::new();
        }
        match self.api().and_then(|a| a.get("/v1/satellites", &[])) {
            Ok(r) if r.status == 200 => r.body.as_array().cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn show_props(&self, obj: &Value) -> Result<()> {
        let props = obj.get("props").cloned().unwrap_or_else(|| json!({}));
        if self.g.machine_readable {
            outln!("{}", serde_json::to_string_pretty(&json!([props]))?);
            return Ok(());
        }
        let mut t = Table::new(&["Key", "Value"]);
        if let Some(m) = props.as_object() {
            for (k, v) in m {
                t.row(vec![k.clone(), v.as_str().unwrap_or_default().to_owned()]);
            }
        }
        out!("{}", t.render(!self.g.no_utf8));
        Ok(())
    }

    /// Prints the kept ApiCallRc entries; the exit code they mean.
    fn finish(&self) -> Result<u8> {
        if self.g.machine_readable {
            if !self.replies.is_empty() {
                outln!("{}", serde_json::to_string_pretty(&self.replies)?);
            }
        } else {
            for r in &self.replies {
                out!("{}", output::block(r));
            }
        }
        Ok(match output::worst(&self.replies) {
            Some(Level::Error) => EXIT_API_ERROR,
            Some(Level::Warning) if self.g.warn_as_error => EXIT_API_ERROR,
            _ => 0,
        })
    }
}

/// Runs a client command; prints errors; the exit code as the linstor client's.
pub fn main(g: &Global, cmd: Command) -> ExitCode {
    exit(g, |ctx| run(ctx, cmd))
}

/// `tandem controller <verb>`.
pub fn main_controller(g: &Global, cmd: ControllerCmd) -> ExitCode {
    exit(g, |ctx| controller(ctx, cmd))
}

fn exit(g: &Global, f: impl FnOnce(&mut Ctx) -> Result<()>) -> ExitCode {
    let mut ctx = Ctx {
        g,
        api: OnceCell::new(),
        replies: Vec::new(),
    };
    let code = match f(&mut ctx).and_then(|()| ctx.finish()) {
        Ok(code) => code,
        Err(e) => {
            // Whatever the controller already answered is shown first.
            let _ = ctx.finish();
            let code = if e.downcast_ref::<conn::Unreachable>().is_some() {
                EXIT_CONNECTION
            } else if e.downcast_ref::<Usage>().is_some() {
                EXIT_ARGUMENTS
            } else {
                EXIT_UNKNOWN
            };
            eprint!(
                "{}",
                output::block(&output::local_error(&format!("{e:#}"), None, None))
            );
            code
        }
    };
    ExitCode::from(code)
}

fn props_modify(key: &str, value: Option<&str>) -> Value {
    match value {
        Some(v) => json!({"override_props": {key: v}}),
        None => json!({"delete_props": [key]}),
    }
}

fn drbd_modify(args: &[String], what: &str) -> Result<(String, Value)> {
    let c = drbd::parse(args).map_err(|e| usage(e.to_string()))?;
    let [name] = c.names.as_slice() else {
        return Err(usage(format!(
            "drbd-options needs exactly one {what} name after the options, got {:?}",
            c.names
        )));
    };
    Ok((
        name.clone(),
        json!({"override_props": c.set, "delete_props": c.unset}),
    ))
}

fn filters<'q>(pairs: &[(&'q str, &[String])]) -> Vec<(&'q str, String)> {
    pairs
        .iter()
        .flat_map(|(k, vs)| vs.iter().map(move |v| (*k, v.clone())))
        .collect()
}

fn enc_type(t: &str) -> &'static str {
    if t.eq_ignore_ascii_case("ssl") {
        "SSL"
    } else {
        "Plain"
    }
}

fn resolve_ip(name: &str) -> Result<String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<std::net::SocketAddr> = (name, 0)
        .to_socket_addrs()
        .map_err(|e| {
            usage(format!(
                "no IP given for node {name:?} and it does not resolve: {e}"
            ))
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| a.ip().to_string())
        .ok_or_else(|| {
            usage(format!(
                "no IP given for node {name:?} and it resolves to nothing"
            ))
        })
}

fn run(ctx: &mut Ctx, cmd: Command) -> Result<()> {
    match cmd {
        Command::Node { cmd } => node(ctx, cmd),
        Command::StoragePool { cmd } => storage_pool(ctx, cmd),
        Command::ResourceGroup { cmd } => resource_group(ctx, cmd),
        Command::VolumeGroup { cmd } => volume_group(ctx, cmd),
        Command::ResourceDefinition { cmd } => resource_definition(ctx, cmd),
        Command::VolumeDefinition { cmd } => volume_definition(ctx, cmd),
        Command::Resource { cmd } => resource(ctx, cmd),
    }
}

fn controller(ctx: &mut Ctx, cmd: ControllerCmd) -> Result<()> {
    match cmd {
        ControllerCmd::Version => {
            if let Some(v) = ctx.object("/v1/controller/version")? {
                if ctx.g.machine_readable {
                    outln!("{}", serde_json::to_string_pretty(&json!([v]))?);
                } else {
                    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                    outln!(
                        "tandem controller {}; GIT-hash: {}; REST API {}",
                        s("version"),
                        s("git_hash"),
                        s("rest_api_version")
                    );
                }
            }
        }
        ControllerCmd::ListProperties => {
            if let Some(v) = ctx.object("/v1/controller/properties")? {
                ctx.show_props(&json!({"props": v}))?;
            }
        }
        ControllerCmd::SetProperty { key, value } => match value {
            Some(v) => {
                ctx.mutate(
                    "POST",
                    "/v1/controller/properties",
                    Some(json!({"override_props": {key: v}})),
                )?;
            }
            None => {
                ctx.mutate(
                    "DELETE",
                    &format!("/v1/controller/properties/{}", seg(&key)),
                    None,
                )?;
            }
        },
    }
    Ok(())
}

fn str_of<'v>(v: &'v Value, k: &str) -> &'v str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn strs(v: &Value, k: &str) -> Vec<String> {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn has_flag(v: &Value, flag: &str) -> bool {
    strs(v, "flags").iter().any(|f| f == flag)
}

fn node_table(nodes: &[Value]) -> Table {
    let mut t = Table::new(&["Node", "NodeType", "Addresses", "State"]);
    for n in nodes {
        let ifs = n
            .get("net_interfaces")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let active: Vec<&Value> = ifs
            .iter()
            .filter(|i| i.get("is_active").and_then(Value::as_bool) == Some(true))
            .collect();
        let shown: Vec<&Value> = if active.is_empty() {
            ifs.iter().collect()
        } else {
            active
        };
        let addrs: Vec<String> = shown
            .iter()
            .map(|i| {
                let port = i
                    .get("satellite_port")
                    .and_then(Value::as_u64)
                    .map(|p| format!(":{p}"))
                    .unwrap_or_default();
                let enc = str_of(i, "satellite_encryption_type").to_uppercase();
                format!("{}{port} ({enc})", str_of(i, "address"))
            })
            .collect();
        let state = if has_flag(n, "EVICTED") {
            "EVICTED".to_owned()
        } else if has_flag(n, "DELETE") {
            "DELETE".to_owned()
        } else {
            match str_of(n, "connection_status") {
                "ONLINE" => "Online".to_owned(),
                "OFFLINE" => "OFFLINE".to_owned(),
                "" => "Unknown".to_owned(),
                s => format!("OFFLINE({})", s.replace('_', " ")),
            }
        };
        t.row(vec![
            str_of(n, "name").to_owned(),
            str_of(n, "type").to_owned(),
            addrs.join(", "),
            state,
        ]);
    }
    t
}

fn in_filter(filter: &[String], name: &str) -> bool {
    filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// The satellites' status lines for `node list`: problems of the listed nodes, and
/// pending cleanups of deleted nodes.
fn node_notes(sats: &[Value], filter: &[String]) -> Vec<String> {
    sats.iter()
        .filter(|e| in_filter(filter, str_of(e, "node")))
        .flat_map(|e| strs(e, "status_lines"))
        .collect()
}

fn node(ctx: &mut Ctx, cmd: NodeCmd) -> Result<()> {
    match cmd {
        NodeCmd::Create {
            node_type,
            port,
            communication_type,
            interface_name,
            name,
            ip,
        } => {
            let ip = match ip {
                Some(ip) => ip,
                None => resolve_ip(&name)?,
            };
            let ssl = communication_type.eq_ignore_ascii_case("ssl");
            let port = port.unwrap_or(if ssl { 3367 } else { 3366 });
            ctx.mutate(
                "POST",
                "/v1/nodes",
                Some(json!({
                    "name": name,
                    "type": node_type,
                    "net_interfaces": [{
                        "name": interface_name,
                        "address": ip,
                        "satellite_port": port,
                        "satellite_encryption_type": enc_type(&communication_type),
                        "is_active": true,
                    }],
                })),
            )?;
        }
        NodeCmd::List { nodes, props } => {
            let q = filters(&[("nodes", &nodes), ("props", &props)]);
            if let Some(list) = ctx.list("/v1/nodes", &q)? {
                ctx.show(&list, || Ok(node_table(&list)))?;
                let lines = node_notes(&ctx.satellites(), &nodes);
                ctx.notes(&lines);
            }
        }
        NodeCmd::Delete { nodes } => {
            for n in nodes {
                if !ctx.mutate("DELETE", &format!("/v1/nodes/{}", seg(&n)), None)? {
                    break;
                }
            }
        }
        NodeCmd::Lost { node } => {
            ctx.mutate("DELETE", &format!("/v1/nodes/{}/lost", seg(&node)), None)?;
        }
        NodeCmd::SetProperty { node, key, value } => {
            let body = props_modify(&key, value.as_deref());
            ctx.mutate("PUT", &format!("/v1/nodes/{}", seg(&node)), Some(body))?;
        }
        NodeCmd::ListProperties { node } => {
            if let Some(n) = ctx.object(&format!("/v1/nodes/{}", seg(&node)))? {
                ctx.show_props(&n)?;
            }
        }
        NodeCmd::Interface { cmd } => interface(ctx, cmd)?,
    }
    Ok(())
}

fn interface(ctx: &mut Ctx, cmd: IfCmd) -> Result<()> {
    match cmd {
        IfCmd::Create {
            port,
            communication_type,
            active,
            node,
            name,
            ip,
        } => {
            let ssl = communication_type.eq_ignore_ascii_case("ssl");
            let mut body = json!({
                "name": name,
                "address": ip,
                "satellite_port": port.unwrap_or(if ssl { 3367 } else { 3366 }),
                "satellite_encryption_type": enc_type(&communication_type),
            });
            if active && let Some(o) = body.as_object_mut() {
                o.insert("is_active".into(), json!(true));
            }
            ctx.mutate(
                "POST",
                &format!("/v1/nodes/{}/net-interfaces", seg(&node)),
                Some(body),
            )?;
        }
        IfCmd::List { node } => {
            if let Some(list) =
                ctx.list(&format!("/v1/nodes/{}/net-interfaces", seg(&node)), &[])?
            {
                ctx.show(&list, || {
                    let mut t =
                        Table::new(&["Node", "NetInterface", "IP", "Port", "EncryptionType"]);
                    for i in &list {
                        let active = i.get("is_active").and_then(Value::as_bool) == Some(true);
                        t.row(vec![
                            node.clone(),
                            format!(
                                "{}{}",
                                if active { "+ StltCon " } else { "" },
                                str_of(i, "name")
                            ),
                            str_of(i, "address").to_owned(),
                            i.get("satellite_port")
                                .and_then(Value::as_u64)
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            str_of(i, "satellite_encryption_type").to_uppercase(),
                        ]);
                    }
                    Ok(t)
                })?;
            }
        }
        IfCmd::Delete { node, names } => {
            for n in names {
                let path = format!("/v1/nodes/{}/net-interfaces/{}", seg(&node), seg(&n));
                if !ctx.mutate("DELETE", &path, None)? {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn storage_pool(ctx: &mut Ctx, cmd: SpCmd) -> Result<()> {
    match cmd {
        SpCmd::Create {
            shared_space,
            external_locking,
            kind,
            node,
            name,
            driver_pool,
        } => {
            let mut props = BTreeMap::new();
            match (kind, driver_pool) {
                (SpKind::Diskless, Some(p)) => {
                    return Err(usage(format!(
                        "a diskless pool has no driver pool; drop {p:?}"
                    )));
                }
                (SpKind::Diskless, None) => {}
                (_, None) => {
                    return Err(usage(format!(
                        "storage-pool create {}: name the driver pool after the pool name \
                         (the volume group, vg/thinpool, zpool or directory), e.g. \
                         `sp c zfsthin {node} {name} rpool/data`",
                        kind.to_possible_value()
                            .map(|v| v.get_name().to_owned())
                            .unwrap_or_default()
                    )));
                }
                (_, Some(p)) => {
                    props.insert("StorDriver/StorPoolName", p);
                }
            }
            let mut body = json!({
                "storage_pool_name": name,
                "provider_kind": kind.provider(),
                "props": props,
                "external_locking": external_locking,
            });
            if let (Some(s), Some(o)) = (shared_space, body.as_object_mut()) {
                o.insert("free_space_mgr_name".into(), json!(s));
            }
            ctx.mutate(
                "POST",
                &format!("/v1/nodes/{}/storage-pools", seg(&node)),
                Some(body),
            )?;
        }
        SpCmd::List {
            nodes,
            storage_pools,
        } => {
            let q = filters(&[("nodes", &nodes), ("storage_pools", &storage_pools)]);
            if let Some(list) = ctx.list("/v1/view/storage-pools", &q)? {
                ctx.show(&list, || Ok(sp_table(&list)))?;
                let lines: Vec<String> = list
                    .iter()
                    .flat_map(|p| report_lines(p.get("reports")))
                    .collect();
                ctx.notes(&lines);
            }
        }
        SpCmd::Delete { node, name } => {
            let path = format!("/v1/nodes/{}/storage-pools/{}", seg(&node), seg(&name));
            ctx.mutate("DELETE", &path, None)?;
        }
    }
    Ok(())
}

fn sp_table(list: &[Value]) -> Table {
    let mut t = Table::new(&[
        "StoragePool",
        "Node",
        "Driver",
        "PoolName",
        "FreeCapacity",
        "TotalCapacity",
        "CanSnapshots",
        "State",
        "SharedName",
    ]);
    for p in list {
        // A diskless pool reports unlimited space; linstor shows no capacity for it.
        let diskless = str_of(p, "provider_kind") == "DISKLESS";
        let cap = |k: &str| {
            p.get(k)
                .and_then(Value::as_u64)
                .filter(|_| !diskless)
                .map(size::show_kib)
        };
        let (free, total) = (cap("free_capacity"), cap("total_capacity"));
        let reports = p.get("reports").and_then(Value::as_array);
        let state = match reports.and_then(|r| output::worst(r)) {
            Some(Level::Error) => "Error",
            Some(Level::Warning) => "Warning",
            _ if total.is_none() && !diskless => "Unknown",
            _ => "Ok",
        };
        let snaps = p.get("supports_snapshots").and_then(Value::as_bool) == Some(true);
        t.row(vec![
            str_of(p, "storage_pool_name").to_owned(),
            str_of(p, "node_name").to_owned(),
            str_of(p, "provider_kind").to_owned(),
            p.get("props")
                .map(|pr| str_of(pr, "StorDriver/StorPoolName").to_owned())
                .unwrap_or_default(),
            free.unwrap_or_default(),
            total.unwrap_or_default(),
            if snaps { "True" } else { "False" }.to_owned(),
            state.to_owned(),
            str_of(p, "free_space_mgr_name").to_owned(),
        ]);
    }
    t
}

fn select_filter_text(f: &Value) -> String {
    let mut lines = Vec::new();
    if let Some(n) = f.get("place_count").and_then(Value::as_u64) {
        lines.push(format!("PlaceCount: {n}"));
    }
    let list = |k: &str, title: &str, lines: &mut Vec<String>| {
        let v = strs(f, k);
        if !v.is_empty() {
            lines.push(format!("{title}: {}", v.join(", ")));
        }
    };
    list("storage_pool_list", "StoragePool(s)", &mut lines);
    list(
        "storage_pool_diskless_list",
        "DisklessStoragePool(s)",
        &mut lines,
    );
    list("not_place_with_rsc", "NotPlaceWithRsc", &mut lines);
    if let Some(r) = f.get("not_place_with_rsc_regex").and_then(Value::as_str) {
        lines.push(format!("NotPlaceWithRscRegex: {r}"));
    }
    list("replicas_on_same", "ReplicasOnSame", &mut lines);
    list("replicas_on_different", "ReplicasOnDifferent", &mut lines);
    list("provider_list", "ProviderList", &mut lines);
    if let Some(d) = f.get("diskless_on_remaining").and_then(Value::as_bool) {
        lines.push(format!(
            "DisklessOnRemaining: {}",
            if d { "True" } else { "False" }
        ));
    }
    lines.join("\n")
}

fn resource_group(ctx: &mut Ctx, cmd: RgCmd) -> Result<()> {
    match cmd {
        RgCmd::Create {
            placement,
            description,
            peer_slots,
            name,
        } => {
            let mut body = json!({"name": name, "select_filter": placement.filter()});
            if let Some(o) = body.as_object_mut() {
                if let Some(d) = description {
                    o.insert("description".into(), json!(d));
                }
                if let Some(p) = peer_slots {
                    o.insert("peer_slots".into(), json!(p));
                }
            }
            ctx.mutate("POST", "/v1/resource-groups", Some(body))?;
        }
        RgCmd::Modify {
            placement,
            description,
            peer_slots,
            name,
        } => {
            let mut o = serde_json::Map::new();
            if !placement.is_empty() {
                o.insert("select_filter".into(), placement.filter());
            }
            if let Some(d) = description {
                o.insert("description".into(), json!(d));
            }
            if let Some(p) = peer_slots {
                o.insert("peer_slots".into(), json!(p));
            }
            if o.is_empty() {
                return Err(usage(
                    "nothing to modify; give placement options, --description or --peer-slots",
                ));
            }
            ctx.mutate(
                "PUT",
                &format!("/v1/resource-groups/{}", seg(&name)),
                Some(Value::Object(o)),
            )?;
        }
        RgCmd::List { resource_groups } => {
            let q = filters(&[("resource_groups", &resource_groups)]);
            let Some(mut list) = ctx.list("/v1/resource-groups", &q)? else {
                return Ok(());
            };
            if !resource_groups.is_empty() {
                list.retain(|g| {
                    resource_groups
                        .iter()
                        .any(|n| n.eq_ignore_ascii_case(str_of(g, "name")))
                });
            }
            if ctx.g.machine_readable {
                return ctx.show(&list, || Ok(Table::new(&[])));
            }
            let mut t = Table::new(&["ResourceGroup", "SelectFilter", "VlmNrs", "Description"]);
            for g in &list {
                let name = str_of(g, "name");
                let vgs = ctx.api()?.get(
                    &format!("/v1/resource-groups/{}/volume-groups", seg(name)),
                    &[],
                )?;
                let nrs: Vec<String> = vgs
                    .body
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.get("volume_number").and_then(Value::as_u64))
                            .map(|n| n.to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                t.row(vec![
                    name.to_owned(),
                    g.get("select_filter")
                        .map(select_filter_text)
                        .unwrap_or_default(),
                    nrs.join(","),
                    str_of(g, "description").to_owned(),
                ]);
            }
            ctx.show(&list, || Ok(t))?;
        }
        RgCmd::Delete { name } => {
            ctx.mutate(
                "DELETE",
                &format!("/v1/resource-groups/{}", seg(&name)),
                None,
            )?;
        }
        RgCmd::Spawn {
            partial,
            definition_only,
            placement,
            resource_group,
            resource_definition,
            sizes,
        } => {
            let sizes = sizes.iter().map(|s| kib(s)).collect::<Result<Vec<u64>>>()?;
            let mut body = json!({
                "resource_definition_name": resource_definition,
                "volume_sizes": sizes,
                "partial": partial,
                "definitions_only": definition_only,
            });
            if !placement.is_empty()
                && let Some(o) = body.as_object_mut()
            {
                o.insert("select_filter".into(), placement.filter());
            }
            ctx.mutate(
                "POST",
                &format!("/v1/resource-groups/{}/spawn", seg(&resource_group)),
                Some(body),
            )?;
        }
        RgCmd::DrbdOptions { args } => {
            let (name, body) = drbd_modify(&args, "resource group")?;
            ctx.mutate(
                "PUT",
                &format!("/v1/resource-groups/{}", seg(&name)),
                Some(body),
            )?;
        }
        RgCmd::SetProperty { name, key, value } => {
            let body = props_modify(&key, value.as_deref());
            ctx.mutate(
                "PUT",
                &format!("/v1/resource-groups/{}", seg(&name)),
                Some(body),
            )?;
        }
        RgCmd::ListProperties { name } => {
            if let Some(g) = ctx.object(&format!("/v1/resource-groups/{}", seg(&name)))? {
                ctx.show_props(&g)?;
            }
        }
    }
    Ok(())
}

fn volume_group(ctx: &mut Ctx, cmd: VgCmd) -> Result<()> {
    match cmd {
        VgCmd::Create {
            vlmnr,
            gross,
            resource_group,
        } => {
            let mut body = json!({"flags": if gross { vec!["GROSS_SIZE"] } else { vec![] }});
            if let (Some(n), Some(o)) = (vlmnr, body.as_object_mut()) {
                o.insert("volume_number".into(), json!(n));
            }
            ctx.mutate(
                "POST",
                &format!("/v1/resource-groups/{}/volume-groups", seg(&resource_group)),
                Some(body),
            )?;
        }
        VgCmd::List { resource_group } => {
            let path = format!("/v1/resource-groups/{}/volume-groups", seg(&resource_group));
            if let Some(list) = ctx.list(&path, &[])? {
                ctx.show(&list, || {
                    let mut t = Table::new(&["VolumeNr", "Flags"]);
                    for v in &list {
                        t.row(vec![
                            v.get("volume_number")
                                .and_then(Value::as_u64)
                                .map(|n| n.to_string())
                                .unwrap_or_default(),
                            strs(v, "flags").join(", "),
                        ]);
                    }
                    Ok(t)
                })?;
            }
        }
        VgCmd::Delete {
            resource_group,
            volume_nr,
        } => {
            let path = format!(
                "/v1/resource-groups/{}/volume-groups/{volume_nr}",
                seg(&resource_group)
            );
            ctx.mutate("DELETE", &path, None)?;
        }
    }
    Ok(())
}

fn drbd_port(rd: &Value) -> String {
    rd.get("layer_data")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().find(|d| str_of(d, "type") == "DRBD"))
        .and_then(|d| d.get("data"))
        .and_then(|d| d.get("port"))
        .and_then(Value::as_u64)
        .map(|p| p.to_string())
        .unwrap_or_default()
}

fn layers(layer_data: Option<&Value>) -> String {
    layer_data
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .map(|d| str_of(d, "type").to_owned())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn resource_definition(ctx: &mut Ctx, cmd: RdCmd) -> Result<()> {
    match cmd {
        RdCmd::Create {
            resource_group,
            port,
            name,
        } => {
            let mut rd = json!({"name": name});
            if let (Some(g), Some(o)) = (resource_group, rd.as_object_mut()) {
                o.insert("resource_group_name".into(), json!(g));
            }
            let mut body = json!({"resource_definition": rd});
            if let (Some(p), Some(o)) = (port, body.as_object_mut()) {
                o.insert("drbd_port".into(), json!(p));
            }
            ctx.mutate("POST", "/v1/resource-definitions", Some(body))?;
        }
        RdCmd::List {
            resource_definitions,
        } => {
            let q = filters(&[("resource_definitions", &resource_definitions)]);
            if let Some(list) = ctx.list("/v1/resource-definitions", &q)? {
                ctx.show(&list, || {
                    let mut t =
                        Table::new(&["ResourceName", "Port", "ResourceGroup", "Layers", "State"]);
                    for rd in &list {
                        t.row(vec![
                            str_of(rd, "name").to_owned(),
                            drbd_port(rd),
                            str_of(rd, "resource_group_name").to_owned(),
                            layers(rd.get("layer_data")),
                            if has_flag(rd, "DELETE") {
                                "DELETING"
                            } else {
                                "ok"
                            }
                            .to_owned(),
                        ]);
                    }
                    Ok(t)
                })?;
            }
        }
        RdCmd::Delete { name } => {
            ctx.mutate(
                "DELETE",
                &format!("/v1/resource-definitions/{}", seg(&name)),
                None,
            )?;
        }
        RdCmd::AutoPlace { placement, name } => {
            let mut body = json!({"select_filter": placement.filter()});
            if let (Some(d), Some(o)) = (placement.diskless_on_remaining, body.as_object_mut()) {
                o.insert("diskless_on_remaining".into(), json!(d));
            }
            ctx.mutate(
                "POST",
                &format!("/v1/resource-definitions/{}/autoplace", seg(&name)),
                Some(body),
            )?;
        }
        RdCmd::DrbdOptions { args } => {
            let (name, body) = drbd_modify(&args, "resource definition")?;
            ctx.mutate(
                "PUT",
                &format!("/v1/resource-definitions/{}", seg(&name)),
                Some(body),
            )?;
        }
        RdCmd::SetProperty { name, key, value } => {
            let body = props_modify(&key, value.as_deref());
            ctx.mutate(
                "PUT",
                &format!("/v1/resource-definitions/{}", seg(&name)),
                Some(body),
            )?;
        }
        RdCmd::ListProperties { name } => {
            if let Some(rd) = ctx.object(&format!("/v1/resource-definitions/{}", seg(&name)))? {
                ctx.show_props(&rd)?;
            }
        }
    }
    Ok(())
}

fn volume_definition(ctx: &mut Ctx, cmd: VdCmd) -> Result<()> {
    match cmd {
        VdCmd::Create {
            storage_pool,
            vlmnr,
            gross,
            resource_definition,
            size,
        } => {
            let size_kib = kib(&size)?;
            let mut vd = json!({
                "size_kib": size_kib,
                "flags": if gross { vec!["GROSS_SIZE"] } else { vec![] },
            });
            if let Some(o) = vd.as_object_mut() {
                if let Some(n) = vlmnr {
                    o.insert("volume_number".into(), json!(n));
                }
                if let Some(p) = storage_pool {
                    o.insert("props".into(), json!({"StorPoolName": p}));
                }
            }
            ctx.mutate(
                "POST",
                &format!(
                    "/v1/resource-definitions/{}/volume-definitions",
                    seg(&resource_definition)
                ),
                Some(json!({"volume_definition": vd})),
            )?;
        }
        VdCmd::List {
            resource_definitions,
        } => {
            let mut q = filters(&[("resource_definitions", &resource_definitions)]);
            q.push(("with_volume_definitions", "true".into()));
            let Some(list) = ctx.list("/v1/resource-definitions", &q)? else {
                return Ok(());
            };
            if ctx.g.machine_readable {
                return ctx.show(&list, || Ok(Table::new(&[])));
            }
            let mut t = Table::new(&["ResourceName", "VolumeNr", "Size", "Gross", "State"]);
            for rd in &list {
                let vds = rd
                    .get("volume_definitions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for vd in &vds {
                    t.row(vec![
                        str_of(rd, "name").to_owned(),
                        vd.get("volume_number")
                            .and_then(Value::as_u64)
                            .map(|n| n.to_string())
                            .unwrap_or_default(),
                        vd.get("size_kib")
                            .and_then(Value::as_u64)
                            .map(size::show_kib)
                            .unwrap_or_default(),
                        if has_flag(vd, "GROSS_SIZE") { "+" } else { "" }.to_owned(),
                        if has_flag(vd, "RESIZE") {
                            "resizing"
                        } else {
                            "ok"
                        }
                        .to_owned(),
                    ]);
                }
            }
            ctx.show(&list, || Ok(t))?;
        }
        VdCmd::SetSize {
            resource_definition,
            volume_nr,
            size,
        } => {
            let size_kib = kib(&size)?;
            ctx.mutate(
                "PUT",
                &format!(
                    "/v1/resource-definitions/{}/volume-definitions/{volume_nr}",
                    seg(&resource_definition)
                ),
                Some(json!({"size_kib": size_kib})),
            )?;
        }
        VdCmd::Delete {
            resource_definition,
            volume_nr,
        } => {
            ctx.mutate(
                "DELETE",
                &format!(
                    "/v1/resource-definitions/{}/volume-definitions/{volume_nr}",
                    seg(&resource_definition)
                ),
                None,
            )?;
        }
    }
    Ok(())
}

/// A volume's state as the linstor client shows it: the disk state its satellite
/// reports, `SyncTarget(12.34%)` while it is being synced, `TieBreaker` for the
/// tiebreaker's diskless volume, `Unknown` while the satellite is away.
fn volume_state_cell(r: &Value, v: &Value) -> String {
    let st = v.get("state");
    let get = |k: &str| st.map(|s| str_of(s, k)).unwrap_or_default();
    if get("replication_state") == "SyncTarget" {
        return match st
            .and_then(|s| s.get("done_percentage"))
            .and_then(Value::as_f64)
        {
            Some(p) => format!("SyncTarget({p:.2}%)"),
            None => "SyncTarget".into(),
        };
    }
    match get("disk_state") {
        "Diskless" if has_flag(r, "TIE_BREAKER") => "TieBreaker".into(),
        "" => "Unknown".into(),
        d => d.to_owned(),
    }
}

/// The state cell of `resource list`: the volumes' states (one when they agree).
fn resource_state(r: &Value) -> String {
    if has_flag(r, "DELETE") {
        return "DELETING".into();
    }
    if has_flag(r, "INACTIVE") {
        return "INACTIVE".into();
    }
    let vols = r
        .get("volumes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut cells: Vec<String> = Vec::new();
    for v in &vols {
        let c = volume_state_cell(r, v);
        if !cells.contains(&c) {
            cells.push(c);
        }
    }
    if cells.is_empty() {
        return if has_flag(r, "TIE_BREAKER") {
            "TieBreaker".into()
        } else if has_flag(r, "DRBD_DISKLESS") {
            "Diskless".into()
        } else {
            "Unknown".into()
        };
    }
    cells.join(", ")
}

/// The messages of ApiCallRc `reports`, each with its correction.
fn report_lines(reports: Option<&Value>) -> Vec<String> {
    reports
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    let msg = str_of(e, "message");
                    match e.get("correction").and_then(Value::as_str) {
                        Some(c) if !c.is_empty() && !msg.contains(c) => format!("{msg} ({c})"),
                        _ => msg.to_owned(),
                    }
                })
                .filter(|l| !l.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// Status lines under `resource list`: what the satellites report about the listed
/// resources, nodes whose state is unknown, and resources still being removed.
fn resource_notes(
    list: &[Value],
    sats: &[Value],
    rsc_filter: &[String],
    node_filter: &[String],
) -> Vec<String> {
    let mut lines: Vec<String> = list
        .iter()
        .flat_map(|r| {
            r.get("volumes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|v| report_lines(v.get("reports")))
        .collect();
    let listed_nodes: std::collections::BTreeSet<String> = list
        .iter()
        .map(|r| str_of(r, "node_name").to_ascii_lowercase())
        .collect();
    for e in sats {
        let node = str_of(e, "node");
        let status = str_of(e, "connection_status");
        if !e.get("lost").and_then(Value::as_bool).unwrap_or(false)
            && status != "ONLINE"
            && listed_nodes.contains(&node.to_ascii_lowercase())
        {
            lines.push(format!(
                "{node} is {status}: the state of its resources is unknown (tandem node list says why)"
            ));
        }
        if !in_filter(node_filter, node) {
            continue;
        }
        for rm in e
            .get("removing")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = str_of(rm, "name");
            if in_filter(rsc_filter, name) {
                lines.push(format!(
                    "{node}: resource '{name}' is being removed: {}",
                    str_of(rm, "reason")
                ));
            }
        }
    }
    lines
}

fn resource_table(list: &[Value]) -> Table {
    let mut t = Table::new(&[
        "ResourceName",
        "Node",
        "Layers",
        "Usage",
        "Conns",
        "State",
        "CreatedOn",
    ]);
    for r in list {
        let state = r.get("state");
        let usage = match state.and_then(|s| s.get("in_use")).and_then(Value::as_bool) {
            Some(true) => "InUse",
            Some(false) => "Unused",
            None => "Unknown",
        };
        let conns = r
            .get("layer_object")
            .and_then(|l| l.get("drbd"))
            .and_then(|d| d.get("connections"))
            .and_then(Value::as_object);
        let conns = match conns {
            Some(c) if !c.is_empty() => {
                let bad: Vec<String> = c
                    .iter()
                    .filter(|(_, v)| v.get("connected").and_then(Value::as_bool) != Some(true))
                    .map(|(n, v)| format!("{}({n})", str_of(v, "message")))
                    .collect();
                if bad.is_empty() {
                    "Ok".to_owned()
                } else {
                    bad.join(",")
                }
            }
            _ => "Unknown".to_owned(),
        };
        let mut layers_list = Vec::new();
        let mut l = r.get("layer_object");
        while let Some(obj) = l {
            layers_list.push(str_of(obj, "type").to_owned());
            l = obj
                .get("children")
                .and_then(Value::as_array)
                .and_then(|c| c.first());
        }
        let created = r
            .get("create_timestamp")
            .and_then(Value::as_u64)
            .map(|ms| ms.to_string())
            .unwrap_or_default();
        t.row(vec![
            str_of(r, "name").to_owned(),
            str_of(r, "node_name").to_owned(),
            layers_list.join(","),
            usage.to_owned(),
            conns,
            resource_state(r),
            created,
        ]);
    }
    t
}

fn volumes_table(list: &[Value]) -> Table {
    let mut t = Table::new(&[
        "Resource",
        "Node",
        "StoragePool",
        "VolNr",
        "DevicePath",
        "Allocated",
        "InUse",
        "State",
    ]);
    for r in list {
        let usage = match r
            .get("state")
            .and_then(|s| s.get("in_use"))
            .and_then(Value::as_bool)
        {
            Some(true) => "InUse",
            Some(false) => "Unused",
            None => "Unknown",
        };
        for v in r
            .get("volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            t.row(vec![
                str_of(r, "name").to_owned(),
                str_of(r, "node_name").to_owned(),
                str_of(&v, "storage_pool_name").to_owned(),
                v.get("volume_number")
                    .and_then(Value::as_u64)
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                str_of(&v, "device_path").to_owned(),
                v.get("allocated_size_kib")
                    .and_then(Value::as_u64)
                    .map(size::show_kib)
                    .unwrap_or_default(),
                usage.to_owned(),
                volume_state_cell(r, &v),
            ]);
        }
    }
    t
}

fn resource(ctx: &mut Ctx, cmd: RCmd) -> Result<()> {
    match cmd {
        RCmd::Create {
            storage_pool,
            drbd_diskless,
            auto_place,
            diskless_on_remaining,
            names,
        } => {
            let Some((rd, nodes)) = names.split_last() else {
                bail!("name the resource definition");
            };
            if let Some(n) = auto_place {
                if !nodes.is_empty() {
                    return Err(usage(
                        "--auto-place chooses the nodes; name only the resource definition",
                    ));
                }
                let (key, count) = match n.strip_prefix('+') {
                    Some(c) => ("additional_place_count", c),
                    None => ("place_count", n.as_str()),
                };
                let count: u32 = count
                    .parse()
                    .map_err(|_| usage(format!("--auto-place {n:?}: write a number N or +N")))?;
                let mut filter = json!({key: count});
                if !storage_pool.is_empty()
                    && let Some(o) = filter.as_object_mut()
                {
                    o.insert("storage_pool_list".into(), json!(storage_pool));
                }
                let mut body = json!({"select_filter": filter});
                if let (Some(d), Some(o)) = (diskless_on_remaining, body.as_object_mut()) {
                    o.insert("diskless_on_remaining".into(), json!(d));
                }
                ctx.mutate(
                    "POST",
                    &format!("/v1/resource-definitions/{}/autoplace", seg(rd)),
                    Some(body),
                )?;
                return Ok(());
            }
            if nodes.is_empty() {
                return Err(usage(
                    "name the nodes before the resource definition (NODE... RD), or use --auto-place N",
                ));
            }
            if drbd_diskless && !storage_pool.is_empty() {
                return Err(usage(
                    "--drbd-diskless and --storage-pool exclude each other",
                ));
            }
            let list: Vec<Value> = nodes
                .iter()
                .map(|n| {
                    let mut r = json!({"node_name": n});
                    if let Some(o) = r.as_object_mut() {
                        if drbd_diskless {
                            o.insert("flags".into(), json!(["DRBD_DISKLESS"]));
                        }
                        if let Some(p) = storage_pool.first() {
                            o.insert("props".into(), json!({"StorPoolName": p}));
                        }
                    }
                    json!({"resource": r})
                })
                .collect();
            ctx.mutate(
                "POST",
                &format!("/v1/resource-definitions/{}/resources", seg(rd)),
                Some(Value::Array(list)),
            )?;
        }
        RCmd::List { resources, nodes } => {
            let q = filters(&[("resources", &resources), ("nodes", &nodes)]);
            if let Some(list) = ctx.list("/v1/view/resources", &q)? {
                ctx.show(&list, || Ok(resource_table(&list)))?;
                let lines = resource_notes(&list, &ctx.satellites(), &resources, &nodes);
                ctx.notes(&lines);
            }
        }
        RCmd::ListVolumes { resources, nodes } => {
            let q = filters(&[("resources", &resources), ("nodes", &nodes)]);
            if let Some(list) = ctx.list("/v1/view/resources", &q)? {
                ctx.show(&list, || Ok(volumes_table(&list)))?;
                let lines = resource_notes(&list, &ctx.satellites(), &resources, &nodes);
                ctx.notes(&lines);
            }
        }
        RCmd::MakeAvailable {
            diskful,
            node,
            resource,
        } => {
            let path = format!(
                "/v1/resource-definitions/{}/resources/{}/make-available",
                seg(&resource),
                seg(&node)
            );
            ctx.mutate(
                "POST",
                &path,
                Some(serde_json::json!({ "diskful": diskful })),
            )?;
        }
        RCmd::Delete {
            keep_tiebreaker,
            names,
        } => {
            let Some((rd, nodes)) = names.split_last() else {
                bail!("name the nodes and the resource definition");
            };
            for n in nodes {
                let path = format!("/v1/resource-definitions/{}/resources/{}", seg(rd), seg(n));
                let q = if keep_tiebreaker {
                    vec![("keep_tiebreaker", "true".to_owned())]
                } else {
                    vec![]
                };
                let reply = ctx.api()?.delete(&path, &q)?;
                if !ctx.take(reply) {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_table_from_view_json() {
        let list = serde_json::json!([
            {"name": "vm", "node_name": "a", "flags": [],
             "layer_object": {"type": "DRBD", "children": [{"type": "STORAGE"}],
                              "drbd": {"connections": {}}},
             "state": {}, "volumes": [{"state": {"disk_state": "Unknown"}}]},
            {"name": "vm", "node_name": "c", "flags": ["DISKLESS", "DRBD_DISKLESS", "TIE_BREAKER"],
             "layer_object": {"type": "DRBD", "children": [{"type": "STORAGE"}]},
             "state": {"in_use": false}, "volumes": []}
        ]);
        let text = resource_table(list.as_array().unwrap()).render(false);
        assert!(text.contains("| ResourceName | Node | Layers       | Usage   | Conns   | State      | CreatedOn |"), "{text}");
        assert!(
            text.contains(
                "| vm           | a    | DRBD,STORAGE | Unknown | Unknown | Unknown    |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| vm           | c    | DRBD,STORAGE | Unused  | Unknown | TieBreaker |"
            ),
            "{text}"
        );
    }

    #[test]
    fn node_table_from_rest_json() {
        let list = serde_json::json!([{"name": "pve01", "type": "SATELLITE",
            "net_interfaces": [{"name": "default", "address": "10.0.0.1",
                "satellite_port": 3366, "satellite_encryption_type": "PLAIN", "is_active": true}],
            "connection_status": "OFFLINE"}]);
        let text = node_table(list.as_array().unwrap()).render(true);
        assert!(
            text.contains("┊ pve01 ┊ SATELLITE ┊ 10.0.0.1:3366 (PLAIN) ┊ OFFLINE ┊"),
            "{text}"
        );
    }

    #[test]
    fn states_from_satellite_reports() {
        let list = serde_json::json!([
            {"name": "vm", "node_name": "a", "flags": [],
             "layer_object": {"type": "DRBD", "children": [{"type": "STORAGE"}],
                              "drbd": {"connections": {"b": {"connected": true, "message": "Connected"}}}},
             "state": {"in_use": true}, "volumes": [{"state": {"disk_state": "UpToDate"}}]},
            {"name": "vm", "node_name": "b", "flags": [],
             "layer_object": {"type": "DRBD", "children": [{"type": "STORAGE"}],
                              "drbd": {"connections": {"a": {"connected": false, "message": "Connecting"}}}},
             "state": {"in_use": false}, "volumes": [{"state": {"disk_state": "Inconsistent",
                "replication_state": "SyncTarget", "done_percentage": 12.3456}}]},
            {"name": "vm", "node_name": "c", "flags": ["DISKLESS", "DRBD_DISKLESS", "TIE_BREAKER"],
             "layer_object": {"type": "DRBD", "children": [{"type": "STORAGE"}]},
             "state": {"in_use": false}, "volumes": [{"state": {"disk_state": "Diskless"},
                "reports": [{"ret_code": -9223372036854775808_i64, "message": "vm on node 'c': blockd is down",
                             "correction": "start blockd"}]}]},
            {"name": "vm", "node_name": "d", "flags": [],
             "layer_object": {"type": "DRBD", "children": [{"type": "STORAGE"}], "drbd": {"connections": {}}},
             "state": {}, "volumes": [{"state": {"disk_state": "Unknown"}}]}
        ]);
        let list = list.as_array().unwrap();
        let text = resource_table(list).render(false);
        assert!(
            text.contains("| a    | DRBD,STORAGE | InUse   | Ok            | UpToDate           |"),
            "{text}"
        );
        assert!(
            text.contains("| b    | DRBD,STORAGE | Unused  | Connecting(a) | SyncTarget(12.35%) |"),
            "{text}"
        );
        assert!(text.contains("| TieBreaker "), "{text}");
        assert!(
            text.contains("| d    | DRBD,STORAGE | Unknown | Unknown       | Unknown            |"),
            "{text}"
        );
        let sats = serde_json::json!([
            {"node": "d", "connection_status": "OFFLINE", "lost": false, "removing": []},
            {"node": "a", "connection_status": "ONLINE", "lost": false,
             "removing": [{"name": "old", "reason": "volume busy"}]},
            {"node": "gone", "connection_status": "OFFLINE", "lost": true, "removing": []}
        ]);
        let notes = resource_notes(list, sats.as_array().unwrap(), &[], &[]);
        assert_eq!(
            notes,
            [
                "vm on node 'c': blockd is down (start blockd)",
                "d is OFFLINE: the state of its resources is unknown (tandem node list says why)",
                "a: resource 'old' is being removed: volume busy",
            ]
        );
        // Filtered to other resources: no removal line for 'old'.
        let notes = resource_notes(list, sats.as_array().unwrap(), &["vm".into()], &[]);
        assert!(!notes.iter().any(|l| l.contains("old")), "{notes:?}");
    }

    #[test]
    fn node_states_and_notes() {
        let list = serde_json::json!([
            {"name": "a", "type": "SATELLITE", "net_interfaces": [], "connection_status": "ONLINE"},
            {"name": "b", "type": "SATELLITE", "net_interfaces": [], "connection_status": "HOSTNAME_MISMATCH"}
        ]);
        let text = node_table(list.as_array().unwrap()).render(false);
        assert!(text.contains("| Online "), "{text}");
        assert!(text.contains("| OFFLINE(HOSTNAME MISMATCH) |"), "{text}");
        let sats = serde_json::json!([
            {"node": "a", "status_lines": []},
            {"node": "b", "status_lines": ["b: wrong satellite"]},
            {"node": "gone", "lost": true, "status_lines": ["gone (deleted node): cleaning"]}
        ]);
        let sats = sats.as_array().unwrap();
        assert_eq!(
            node_notes(sats, &[]),
            ["b: wrong satellite", "gone (deleted node): cleaning"]
        );
        assert_eq!(node_notes(sats, &["B".into()]), ["b: wrong satellite"]);
    }

    #[test]
    fn select_filter_lines() {
        let f = serde_json::json!({"place_count": 2, "storage_pool_list": ["p"],
            "diskless_on_remaining": true, "not_place_with_rsc": []});
        assert_eq!(
            select_filter_text(&f),
            "PlaceCount: 2\nStoragePool(s): p\nDisklessOnRemaining: True"
        );
    }
}
