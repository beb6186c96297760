//! Default routes as routing netlink reports them, for the doctor and setup.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};

/// A default route of some table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DefaultRoute {
    pub(crate) table: u32,
    /// The interface index it leaves through.
    pub(crate) oif: u32,
    pub(crate) gateway: Option<IpAddr>,
}

/// The default routes of every table, of `family`.
pub(crate) async fn default_routes(
    handle: &Handle,
    family: AddressFamily,
) -> Result<Vec<DefaultRoute>, rtnetlink::Error> {
    let mut dump = RouteMessage::default();
    dump.header.address_family = family;
    let routes: Vec<RouteMessage> = handle.route().get(dump).execute().try_collect().await?;
    Ok(routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .filter_map(|r| {
            let attribute =
                |pick: fn(&RouteAttribute) -> Option<u32>| r.attributes.iter().find_map(pick);
            let table = attribute(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(r.header.table));
            let oif = attribute(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })?;
            let gateway = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(address) => ip_of(address),
                _ => None,
            });
            Some(DefaultRoute {
                table,
                oif,
                gateway,
            })
        })
        .collect())
}

/// The address of a route attribute, if it is IPv4 or IPv6.
pub(crate) fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some((*ip).into()),
        RouteAddress::Inet6(ip) => Some((*ip).into()),
        _ => None,
    }
}
