"""python-linstor, unchanged, against a live tandem cluster (issue 6): nodes with real
satellites, FILE_THIN pools, a spawned resource that reaches UpToDate.

Usage: python3 live_cluster.py linstor://127.0.0.1:PORT SPEC_JSON
SPEC_JSON: [{"name": "n1", "port": SATELLITE_PORT, "replication_port": P, "pool": DIR}, ...]
Every check is an assert; the last line printed is OK on success.
"""
import json
import sys
import time

import linstor


def ok(replies, what):
    assert replies, what + ": no reply"
    errors = [r for r in replies if r.is_error()]
    assert not errors, what + ": " + "; ".join(str(e) for e in errors)


def main(url, spec):
    nodes = json.loads(spec)
    with linstor.Linstor(url, timeout=30) as lin:
        for n in nodes:
            ok(lin.node_create(n["name"], "Satellite", "127.0.0.1", port=n["port"],
                               property_dict={"Tandem/ReplicationPort": str(n["replication_port"])}),
               "node create " + n["name"])
        for n in nodes:
            ok(lin.storage_pool_create(n["name"], "pool1", "FILE_THIN", n["pool"]),
               "storage pool on " + n["name"])
        ok(lin.resource_group_create("grp", place_count=2, storage_pool="pool1",
                                     diskless_on_remaining=True), "resource group")
        ok(lin.volume_group_create("grp"), "volume group")
        ok(lin.resource_group_spawn("grp", "vm-101-disk-0", ["64M"]), "spawn")

        deadline = time.monotonic() + 30
        while True:
            listed = lin.node_list()[0].nodes
            online = sorted(x.name for x in listed if x.connection_status == "ONLINE")
            rscs = lin.resource_list(filter_by_resources=["vm-101-disk-0"])[0].resources
            states = sorted((r.node_name, [v.state.disk_state for v in r.volumes]) for r in rscs)
            disks = [s[1][0] if s[1] else None for s in states]
            if len(online) == len(nodes) and len(rscs) == 3 and disks.count("UpToDate") == 2:
                break
            assert time.monotonic() < deadline, "not UpToDate: nodes %s, resources %s" % (online, states)
            time.sleep(0.2)
        print("resources:", states)
        pools = lin.storage_pool_list(filter_by_stor_pools=["pool1"])[0].storage_pools
        assert len(pools) == 3 and all(
            p.free_space and p.free_space.free_capacity > 0 and p.free_space.total_capacity > 0
            for p in pools), [(p.node_name, p.free_space and p.free_space.data_v1) for p in pools]
        ok(lin.resource_dfn_delete("vm-101-disk-0"), "delete")
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
