"""Drives tandem's controller with python-linstor, unchanged (issue 5, acceptance 1).

Usage: python3 linstor_client.py linstor://127.0.0.1:PORT
Every check is an assert; the last line printed is OK on success.
"""
import sys

import linstor

MASK_BITS_CODE = 0x7FFF
FAIL_EXISTS_NODE = 500
FAIL_NOT_FOUND_RSC_GRP = 317
FAIL_INVLD_NODE_NAME = 200
GIB_KIB = 1024 * 1024


def ok(replies, what):
    assert replies, what + ": no reply"
    errors = [r for r in replies if r.is_error()]
    assert not errors, what + ": " + "; ".join(str(e) for e in errors)
    return replies


def one_error(replies, code, what):
    errors = [r for r in replies if r.is_error()]
    assert len(errors) == 1, what + ": expected one error, got " + str([str(r) for r in replies])
    e = errors[0]
    assert e.ret_code & MASK_BITS_CODE == code, "%s: code %d, wanted %d (%s)" % (
        what, e.ret_code & MASK_BITS_CODE, code, e)
    assert e.message and e.cause and e.correction, what + ": message, cause and correction: " + str(e)
    return e


def main(url):
    nodes = ["alpha", "bravo", "charlie"]
    with linstor.Linstor(url, timeout=30) as lin:
        v = lin.controller_version()
        assert v.rest_api_version.startswith("1."), v.rest_api_version
        print("controller", v.version, "REST API", v.rest_api_version)

        for i, n in enumerate(nodes):
            ok(lin.node_create(n, "Satellite", "10.0.0.%d" % (i + 1)), "node create " + n)
        listed = lin.node_list()[0].nodes
        assert sorted(x.name for x in listed) == nodes, [x.name for x in listed]
        # No satellite runs yet: OFFLINE is the truth.
        assert all(x.connection_status == "OFFLINE" for x in listed), [x.connection_status for x in listed]

        # Errors come back as ApiCallResponse errors, and change nothing.
        one_error(lin.node_create("alpha", "Satellite", "10.0.0.9"), FAIL_EXISTS_NODE, "duplicate node")
        one_error(lin.node_create("-bad-", "Satellite", "10.0.0.9"), FAIL_INVLD_NODE_NAME, "invalid node name")
        assert len(lin.node_list()[0].nodes) == 3

        for n in nodes:
            ok(lin.storage_pool_create(n, "pool_zfs", "ZFS_THIN", "tank/thin"), "storage pool on " + n)
        pools = lin.storage_pool_list()[0].storage_pools
        mine = [p for p in pools if p.name == "pool_zfs"]
        assert sorted(p.node_name for p in mine) == nodes, [(p.name, p.node_name) for p in pools]
        assert all(p.provider_kind == "ZFS_THIN" for p in mine)

        ok(lin.resource_group_create("grp", place_count=2, storage_pool="pool_zfs",
                                     diskless_on_remaining=True), "resource group")
        ok(lin.volume_group_create("grp"), "volume group")
        e = one_error(lin.resource_group_spawn("nogroup", "res0", ["1GiB"]), FAIL_NOT_FOUND_RSC_GRP,
                      "spawn from a missing group")
        ok(lin.resource_group_spawn("grp", "res1", ["1GiB"]), "spawn")

        rscs = lin.resource_list(filter_by_resources=["res1"])[0].resources
        assert len(rscs) == 3, [(r.name, r.node_name) for r in rscs]
        assert len({r.node_name for r in rscs}) == 3, "replicas on distinct nodes"
        diskful = [r for r in rscs if "DISKLESS" not in r.flags]
        tiebreaker = [r for r in rscs if "TIE_BREAKER" in r.flags]
        assert len(diskful) == 2, [(r.node_name, r.flags) for r in rscs]
        assert len(tiebreaker) == 1 and "DRBD_DISKLESS" in tiebreaker[0].flags, [r.flags for r in rscs]
        for r in diskful:
            assert [vol.storage_pool_name for vol in r.volumes] == ["pool_zfs"], r.node_name
            assert [vol.storage_pool_driver_name for vol in r.volumes] == ["ZFS_THIN"]
        assert tiebreaker[0].volumes[0].storage_pool_driver_name == "DISKLESS"

        def size_of(rsc):
            rds = lin.resource_dfn_list(filter_by_resource_definitions=[rsc])[0].resource_definitions
            assert len(rds) == 1 and rds[0].resource_group_name == "grp", rds
            return [vd.size for vd in rds[0].volume_definitions]

        assert size_of("res1") == [GIB_KIB], size_of("res1")
        ok(lin.volume_dfn_modify("res1", 0, size=2 * GIB_KIB), "resize")
        assert size_of("res1") == [2 * GIB_KIB], size_of("res1")
        shrink = lin.volume_dfn_modify("res1", 0, size=GIB_KIB)
        assert any(r.is_error() for r in shrink), "shrinking must be refused"
        assert size_of("res1") == [2 * GIB_KIB]

        ok(lin.resource_dfn_delete("res1"), "delete")
        assert lin.resource_list(filter_by_resources=["res1"])[0].resources == []
        assert lin.resource_dfn_list()[0].resource_definitions == []
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
