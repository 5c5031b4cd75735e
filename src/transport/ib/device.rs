//! Probing for the adapter port a rank uses ([`Device`]): the first active port that the
//! `OXCCL_IB_*` settings allow, with its GID and MTU, and the protection domain every
//! link of the rank registers its memory in. It opens devices and reads their ports;
//! choosing among them by name is [`super::select`]'s, and connecting is the links'
//! (`link.rs`, `handshake.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use super::select;
use super::verbs::{self, Context, Pd};
use crate::settings::IbSettings;

/// The adapter port a rank uses, chosen once per communicator.
pub struct Device {
    pub(super) ctx: Arc<Context>,
    pub(super) pd: Arc<Pd>,
    pub(super) port: u8,
    pub(super) gid_index: Option<u8>,
    pub(super) lid: u16,
    pub(super) gid: [u8; 16],
    pub(super) mtu: u32,
}

impl Device {
    /// The first active port that `OXCCL_IB_HCA` allows, with its GID (`OXCCL_IB_GID_INDEX`,
    /// or the RoCE v2 IPv4 one); `Err` says why there is none (for the INFO line that
    /// announces TCP instead).
    pub fn probe(s: &IbSettings) -> std::result::Result<Device, String> {
        if s.disabled {
            return Err("OXCCL_IB_DISABLE is set".into());
        }
        let names = verbs::device_names();
        if names.is_empty() {
            return Err("no RDMA device".into());
        }
        let mut why = Vec::new();
        // Every port of every device that opens, in the order found; then the ones
        // OXCCL_IB_HCA accepts (IbSettings::pick), in that order.
        let mut ctxs = HashMap::new();
        let mut ports = Vec::new();
        for name in &names {
            match Context::open(name) {
                Ok(c) => {
                    ports.extend((1..=c.port_count().unwrap_or(1)).map(|p| (name.clone(), p)));
                    ctxs.insert(name.clone(), c);
                }
                Err(e) => why.push(format!("{name}: {e}")),
            }
        }
        let picked = s.pick(&ports);
        if picked.is_empty() && !ports.is_empty() {
            let all: Vec<String> = ports.iter().map(|(n, p)| format!("{n}:{p}")).collect();
            why.push(format!("OXCCL_IB_HCA accepts none of {}", all.join(", ")));
        }
        for (name, port) in picked {
            let (ctx, port) = (&ctxs[name], *port);
            let info = match ctx.port(port) {
                Ok(i) if i.active => i,
                Ok(_) => {
                    why.push(format!("{name}:{port} is not active"));
                    continue;
                }
                Err(e) => {
                    why.push(format!("{name}:{port}: {e}"));
                    continue;
                }
            };
            let roce = info.link_layer == verbs::LINK_LAYER_ETHERNET;
            let gid_index = if roce {
                s.gid_index(&select::sysfs_gids(name, port)).or_else(|| ipv4_gid(ctx, port))
            } else {
                s.gid_index
            };
            if roce && gid_index.is_none() {
                why.push(format!("{name}:{port} (RoCE) has no RoCE v2 GID; set OXCCL_IB_GID_INDEX"));
                continue;
            }
            let made = ctx.gid(port, gid_index.unwrap_or(0)).and_then(|gid| Ok((gid, Pd::new(ctx)?)));
            match made {
                Ok((gid, pd)) => {
                    return Ok(Device {
                        ctx: ctx.clone(),
                        pd,
                        port,
                        gid_index: gid_index.map(|g| g as u8),
                        lid: info.lid,
                        gid,
                        mtu: info.active_mtu,
                    });
                }
                Err(e) => why.push(format!("{name}:{port}: {e}")),
            }
        }
        Err(why.join("; "))
    }

    /// `rxe0:1, GID index 1, MTU 1024`.
    pub fn describe(&self) -> String {
        let gid = self.gid_index.map_or("no GID".to_string(), |g| format!("GID index {g}"));
        format!("{}:{}, {gid}, MTU {}", self.ctx.name(), self.port, 128 << self.mtu)
    }
}

/// Without sysfs: the first GID of the port's first 16 that holds an IPv4 address.
fn ipv4_gid(ctx: &Context, port: u8) -> Option<u32> {
    (0..16u32).find(|&i| ctx.gid(port, i).is_ok_and(|g| g[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]))
}
