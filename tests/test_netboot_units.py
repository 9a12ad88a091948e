"""The boot kit's pure parts: node table, dnsmasq configuration, iPXE scripts, the
dnsmasq log parser and the node tracker. The configurations are also checked by the
real dnsmasq (``dnsmasq --test``) where it is installed."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from kadeploy.errors import UsageError
from kadeploy.netboot import dnsmasq, ipxe, nodetable
from kadeploy.netboot.dnsmasqlog import BootEvent, DnsmasqLogParser, ServiceLine
from kadeploy.netboot.tracker import Tracker

TABLE_CSV = """# the test cluster
name,mac,address,rack
node1,52:54:00:6B:64:01,198.18.0.11,a
node2,52-54-00-6b-64-02,198.18.0.12,b
"""


def table():
    return nodetable.parse_csv(TABLE_CSV, "nodes.csv")


def options(**kw):
    base = dict(interface="br0", server_address="198.18.0.254",
                boot_url="http://198.18.0.254:8067/boot.ipxe", tftp_root="/srv/tftp")
    base.update(kw)
    return dnsmasq.DnsmasqOptions(**base)


# ------------------------------------------------------------------ node table

def test_csv_table_normalizes_macs_and_keeps_extra_columns():
    t = table()
    assert [n.name for n in t] == ["node1", "node2"]
    assert t.get("52:54:00:6b:64:02").address == "198.18.0.12"
    assert t.get("52-54-00-6B-64-01").extra == {"rack": "a"}
    assert t.get("52:54:00:00:00:99") is None


def test_csv_comments_are_lines_where_a_row_would_start():
    """A '#' line between rows is a comment; inside a quoted field it is the field's,
    and the rows after it keep their own line numbers."""
    text = 'name,mac,note\n# the rack\nn1,52:54:00:00:00:01,"two\n# lines"\n  # indented\nn2,MAC,\n'
    with pytest.raises(UsageError, match=r"^t\.csv:6: row 2: mac 'MAC'"):
        nodetable.parse_csv(text, "t.csv")
    t = nodetable.parse_csv(text.replace("MAC", "52:54:00:00:00:02"), "t.csv")
    assert [n.name for n in t] == ["n1", "n2"] and t.nodes[0].extra == {"note": "two\n# lines"}


def test_toml_table():
    t = nodetable.parse_toml('[[node]]\nname = "n1"\nmac = "52:54:00:00:00:01"\n'
                             '[[node]]\nname = "n2"\nmac = "52:54:00:00:00:02"\naddress = "10.0.0.2"\n')
    assert [(n.name, n.address) for n in t] == [("n1", None), ("n2", "10.0.0.2")]


@pytest.mark.parametrize("text, message", [
    ("name,address\nn1,10.0.0.1\n", "missing mac"),
    ("name,mac\nn1,52:54:00:00:00\n", "row 1: mac '52:54:00:00:00' is not a MAC"),
    ("name,mac\nn_1,52:54:00:00:00:01\n", "row 1: name 'n_1' is not a host name"),
    ("name,mac,address\nn1,52:54:00:00:00:01,10.0.0.300\n", "is not an IPv4 address"),
    ("name,mac\nn1,52:54:00:00:00:01\nn2,52-54-00-00-00-01\n", "mac 52:54:00:00:00:01 appears twice (n1 and n2)"),
    ("name,mac\nn1,52:54:00:00:00:01\nn1,52:54:00:00:00:02\n", "name n1 appears twice"),
    ("name,mac,Name\nn1,52:54:00:00:00:01,x\n", "t.csv:1: column 'name' is named twice (in any case)"),
])
def test_bad_tables_name_the_row(text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        nodetable.parse_csv(text, "t.csv")


# ------------------------------------------------------------------ dnsmasq.conf

def lines(text):
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_dhcp_mode_static_leases_and_ipxe_chainloading():
    conf = lines(dnsmasq.render(options(), table()))
    assert "port=0" in conf and "interface=br0" in conf and "log-dhcp" in conf
    assert "dhcp-range=198.18.0.0,static,255.255.255.0,1h" in conf
    assert "dhcp-host=52:54:00:6b:64:01,198.18.0.11,node1,1h" in conf
    assert "dhcp-ignore=tag:!known" in conf
    # a PXE ROM gets iPXE by TFTP, by architecture; iPXE gets the HTTP script (no loop)
    assert "dhcp-boot=tag:pxe,tag:!ipxe,tag:!efi64,undionly.kpxe,,198.18.0.254" in conf
    assert "dhcp-boot=tag:pxe,tag:!ipxe,tag:efi64,ipxe.efi,,198.18.0.254" in conf
    assert "dhcp-vendorclass=set:pxe,PXEClient" in conf   # other DHCP clients get no boot file
    assert "dhcp-boot=tag:ipxe,http://198.18.0.254:8067/boot.ipxe" in conf
    assert {"dhcp-match=set:ipxe,175", "dhcp-userclass=set:ipxe,iPXE",
            "dhcp-match=set:efi64,option:client-arch,7"} <= set(conf)
    assert "enable-ra" in conf and "dhcp-range=::,constructor:br0,ra-only" in conf
    assert "dhcp-option=option:router" in conf   # no gateway unless asked


def test_dhcp_mode_install_policy_gets_a_dynamic_range_and_no_ignore():
    conf = lines(dnsmasq.render(options(unknown="install", router="198.18.0.1", ra=False), table()))
    assert "dhcp-range=198.18.0.128,198.18.0.254,255.255.255.0,1h" in conf
    assert "dhcp-ignore=tag:!known" not in conf
    assert "dhcp-option=option:router,198.18.0.1" in conf
    assert "enable-ra" not in conf
    assert "no-ping" in conf          # dnsmasq's check would stall every node (test_netboot_netns)


def test_the_ping_check_is_kept_when_asked_and_means_nothing_without_a_dynamic_range():
    assert "no-ping" not in lines(dnsmasq.render(options(unknown="install", ping_check=True), table()))
    assert "no-ping" not in lines(dnsmasq.render(options(), table()))
    t = nodetable.parse_csv("name,mac\nnode1,52:54:00:6b:64:01\n")
    assert "no-ping" not in lines(dnsmasq.render(options(mode="proxy"), t))


def test_proxy_mode_answers_pxe_beside_the_site_server():
    t = nodetable.parse_csv("name,mac\nnode1,52:54:00:6b:64:01\n")
    conf = lines(dnsmasq.render(options(mode="proxy"), t))
    assert "dhcp-range=198.18.0.0,proxy,255.255.255.0" in conf
    assert "dhcp-host=52:54:00:6b:64:01,node1" in conf
    assert not any(line.startswith("dhcp-authoritative") for line in conf)
    assert 'pxe-service=tag:!ipxe,x86PC,"kadeploy: iPXE",undionly.kpxe,198.18.0.254' in conf
    assert 'pxe-service=tag:!ipxe,x86-64_EFI,"kadeploy: iPXE",ipxe.efi,198.18.0.254' in conf
    assert 'pxe-service=tag:ipxe,x86PC,"kadeploy",http://198.18.0.254:8067/boot.ipxe' in conf
    assert 'pxe-service=tag:ipxe,x86-64_EFI,"kadeploy",http://198.18.0.254:8067/boot.ipxe' in conf


@pytest.mark.parametrize("kw, rows, message", [
    (dict(mode="relay"), TABLE_CSV, "DHCP mode 'relay'"),
    (dict(server_address="10.1.1.1", network="198.18.0.0/24"), TABLE_CSV, "not in 198.18.0.0/24"),
    (dict(), "name,mac\nn1,52:54:00:00:00:01\n", "node n1 has no address"),
    (dict(), "name,mac,address\nn1,52:54:00:00:00:01,10.0.0.1\n", "address 10.0.0.1 is not in"),
    (dict(), "name,mac,address\nn1,52:54:00:00:00:01,198.18.0.254\n", "the server's own address"),
])
def test_configurations_that_cannot_work_are_refused(kw, rows, message):
    with pytest.raises(ValueError, match=message):
        dnsmasq.render(options(**kw), nodetable.parse_csv(rows))


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq is not installed")
@pytest.mark.parametrize("kw", [dict(), dict(unknown="install"), dict(mode="proxy"), dict(reply_delay=2),
                                dict(unknown="install", ping_check=True)])
def test_real_dnsmasq_accepts_the_configuration(tmp_path, kw):
    conf = tmp_path / "dnsmasq.conf"
    t = table() if kw.get("mode") != "proxy" else nodetable.parse_csv("name,mac\nn1,52:54:00:00:00:01\n")
    conf.write_text(dnsmasq.render(options(tftp_root=str(tmp_path), **kw), t))
    p = subprocess.run(["dnsmasq", "--test", "-C", str(conf)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "syntax check OK" in p.stderr


# ------------------------------------------------------------------ iPXE scripts

def boot(**kw):
    return ipxe.InstallBoot(base_url="http://198.18.0.254:8067",
                            node_url="http://198.18.0.254:8067/node/52-54-00-6b-64-01",
                            kernel_args=("console=ttyS0,115200",),
                            params={"server": "198.18.0.254", "session": "", "node": "node1", **kw})


def test_chain_script_names_the_node_by_mac():
    s = ipxe.chain_script("http://198.18.0.254:8067")
    assert s.startswith("#!ipxe\n")
    chain = "chain --autofree http://198.18.0.254:8067/node/${net0/mac:hexhyp}/boot.ipxe || goto failed\n"
    # a node script that returns (local boot) ends here, and does not fall into :failed
    assert chain + "exit 0\n:failed\n" in s
    # a UEFI local boot (an error on purpose) goes on to the firmware without a message
    assert ":failed\nisset ${kadeploy-local} && exit 1 ||\necho kadeploy: no boot script" in s


def test_install_script_loads_kernel_and_initrd_over_http_with_the_cmdline():
    s = ipxe.install_script("node1", "52:54:00:6b:64:01", boot())
    kernel = next(line for line in s.splitlines() if line.startswith("kernel "))
    assert kernel.startswith("kernel http://198.18.0.254:8067/vmlinuz initrd=initrd.img BOOTIF=01-52-54-00-6b-64-01 ")
    assert "kadeploy.server=198.18.0.254" in kernel and "kadeploy.node=node1" in kernel
    assert "kadeploy.url=http://198.18.0.254:8067/node/52-54-00-6b-64-01" in kernel
    assert "kadeploy.session" not in kernel           # empty values are left out
    assert kernel.split(" || ")[0].endswith("console=ttyS0,115200")
    assert "initrd http://198.18.0.254:8067/initrd.img || goto failed" in s


def test_kernel_arguments_with_spaces_are_refused():
    with pytest.raises(ValueError, match="contains a space"):
        ipxe.install_script("node1", "52:54:00:6b:64:01", boot(disk="/dev/sd a"))


def test_local_script_boots_the_disk_on_bios_and_returns_to_uefi_firmware():
    s = ipxe.local_script("node1", "http://198.18.0.254:8067")
    assert "sanboot --no-describe --drive 0x80" in s
    assert "iseq ${platform} efi && goto efi" in s
    # BIOS: on to the next boot device; UEFI: an error, else the firmware stops at its menu
    # UEFI: the kit's GRUB that starts the disk's loader; failing that, an error to the firmware
    assert (":bios\nexit 0\n:efi\nchain http://198.18.0.254:8067/localboot.efi ||\n"
            "set kadeploy-local 1\nexit 1\n") in s
    assert "kernel" not in s


# ------------------------------------------------------------------ dnsmasq's log

# Lines as dnsmasq 2.90 writes them with log-dhcp (recorded from a real exchange).
LOG = """\
dnsmasq[3304]: started, version 2.90 DNS disabled
dnsmasq-dhcp[3304]: DHCP, static leases only on 198.18.0.0, lease time 1h
dnsmasq-tftp[3304]: TFTP root is /srv/tftp
dnsmasq-dhcp[3304]: 1297363469 vendor class: PXEClient:Arch:00007:UNDI:003016
dnsmasq-dhcp[3304]: 1297363469 DHCPDISCOVER(br0) 52:54:00:6b:64:01 
dnsmasq-dhcp[3304]: 1297363469 tags: known, efi64, br0
dnsmasq-dhcp[3304]: 1297363469 DHCPOFFER(br0) 198.18.0.11 52:54:00:6b:64:01 
dnsmasq-dhcp[3304]: 1297363470 vendor class: PXEClient:Arch:00007:UNDI:003016
dnsmasq-dhcp[3304]: 1297363470 DHCPREQUEST(br0) 198.18.0.11 52:54:00:6b:64:01 
dnsmasq-dhcp[3304]: 1297363470 bootfile name: ipxe.efi
dnsmasq-dhcp[3304]: 1297363470 DHCPACK(br0) 198.18.0.11 52:54:00:6b:64:01 node1
dnsmasq-tftp[3304]: error 0 User aborted the transfer received from 198.18.0.11
dnsmasq-tftp[3304]: sent /srv/tftp/ipxe.efi to 198.18.0.11
dnsmasq-dhcp[3304]: 88 user class: iPXE
dnsmasq-dhcp[3304]: 88 DHCPDISCOVER(br0) 52:54:00:6b:64:01 
dnsmasq-dhcp[3304]: 99 DHCPDISCOVER(br0) 52:54:00:00:00:99 ignored
dnsmasq-dhcp[3304]: 77 vendor class: kadeploy-install
dnsmasq-dhcp[3304]: 77 DHCPACK(br0) 198.18.0.11 52:54:00:6b:64:01 node1
dnsmasq-tftp[3304]: file /srv/tftp/pxelinux.0 not found for 198.18.0.11
dnsmasq: failed to create listening socket for port 53: Address already in use
"""


def parse_all(text):
    parser = DnsmasqLogParser()
    out = []
    for line in text.splitlines(keepends=True):
        out += parser.feed(line)
    return parser, out


def test_log_parser_follows_dhcp_and_tftp_per_node():
    parser, events = parse_all(LOG)
    boot_events = [e for e in events if isinstance(e, BootEvent)]
    steps = [(e.mac, e.step) for e in boot_events]
    mac = "52:54:00:6b:64:01"
    assert steps == [(mac, "dhcp discover"), (mac, "dhcp offer"), (mac, "dhcp request"), (mac, "dhcp ack"),
                     (mac, "tftp aborted"), (mac, "tftp sent"), (mac, "dhcp discover"),
                     ("52:54:00:00:00:99", "dhcp discover ignored"), (mac, "dhcp ack"), (mac, "tftp error")]
    assert boot_events[0].detail == "from a PXE ROM (UEFI x86-64)"
    assert boot_events[3].detail == "from a PXE ROM (UEFI x86-64), boot ipxe.efi, node1"
    assert boot_events[5].detail == "ipxe.efi" and boot_events[5].ip == "198.18.0.11"
    assert not boot_events[4].failed                  # iPXE's size probe, not an error
    assert boot_events[6].detail == "from iPXE"
    assert boot_events[8].detail == "from the install system, node1"
    assert boot_events[9].failed and "pxelinux.0 not found" in boot_events[9].detail
    assert parser.mac_of_ip == {"198.18.0.11": mac}


def test_log_parser_reports_dnsmasq_errors():
    _parser, events = parse_all(LOG)
    service = [e for e in events if isinstance(e, ServiceLine)]
    assert [s.error for s in service] == [False, False, True]
    assert service[-1].text.startswith("failed to create listening socket")


def test_log_parser_gives_the_same_events_for_every_split_of_unknown_lines():
    # Lines it does not know are ignored, whatever they hold.
    parser = DnsmasqLogParser()
    for junk in ["", "garbage", "dnsmasq-dhcp[1]: 12 DHCPACK(br0) not-a-mac", "dnsmasq-tftp[1]: sent"]:
        assert parser.feed(junk) == []


# ------------------------------------------------------------------ the tracker

class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        self.t += 1
        return self.t


def test_installed_nodes_boot_their_disk_even_after_a_restart():
    tr = Tracker(table(), clock=Clock())
    mac = "52:54:00:6b:64:01"
    assert tr.boot_choice(mac) == "install"
    for step in ("dhcp ack", "ipxe script", "kernel", "initrd", "network", "installing", "installed"):
        tr.step(mac, step)
    assert tr.record(mac).state == "installed" and tr.boot_choice(mac) == "local"
    assert tr.record(mac).step_times()["installed"] == 7.0
    saved = tr.to_json()
    again = Tracker(table())
    again.load_json(saved)
    assert again.boot_choice(mac) == "local" and again.record(mac).state == "installed"
    again.step(mac, "installing")                      # a reinstall forced by hand
    assert again.boot_choice(mac) == "install"


def test_unknown_nodes_are_ignored_or_named_by_the_rule():
    mac = "52:54:00:00:00:99"
    assert Tracker(table()).boot_choice(mac) == "ignore"
    tr = Tracker(table(), unknown="install", name_rule="extra{index:02}-{mac}")
    assert tr.boot_choice(mac) == "install"
    assert tr.record(mac).name == "extra01-525400000099" and not tr.record(mac).known


def test_summary_counts_states_and_nodes_not_seen():
    tr = Tracker(table())
    tr.step("52:54:00:6b:64:01", "failed", "ka-d-client exit status 1", failed=True)
    assert tr.summary() == "nodes: 1 failed, 1 not seen yet"
    tr.event(BootEvent("52:54:00:6b:64:02", "dhcp ack", "198.18.0.12"))
    assert [r.name for r in tr.rows()] == ["node1", "node2"]
    assert tr.record("52:54:00:6b:64:02").ip == "198.18.0.12"


# ------------------------------------------------------------------ the install server's view of the kit

def test_the_state_file_gives_the_server_every_booting_node_with_its_step():
    from kadeploy.netboot.progress import BOOTING, booting_rows, parse
    tr = Tracker(table(), clock=Clock())
    tr.event(BootEvent("52:54:00:6b:64:01", "dhcp ack", "198.18.0.11", "from a PXE ROM (BIOS)"))
    tr.step("52:54:00:6b:64:02", "kernel sent", "70000 bytes", ip="198.18.0.12")
    tr.step("52:54:00:00:00:99", "dhcp discover ignored", "not in the node table")   # a stranger
    nodes = parse(tr.to_json())
    assert [(n.name, n.step, n.ip) for n in nodes] == [("node1", "dhcp ack", "198.18.0.11"),
                                                      ("node2", "kernel sent", "198.18.0.12")]
    rows = booting_rows(nodes, registered=[])
    assert [(r.name, r.state, r.step) for r in rows] == [("node1", BOOTING, "dhcp ack"),
                                                        ("node2", BOOTING, "kernel sent")]
    # registered by its host name (the table's name), or by its address: the server's row takes over
    assert [r.name for r in booting_rows(nodes, registered=[("node1", "198.18.0.50")])] == ["node2"]
    assert [r.name for r in booting_rows(nodes, registered=[("debian", "198.18.0.12")])] == ["node1"]
    # a failure the kit saw is the row's error
    tr.step("52:54:00:6b:64:01", "initrd cut", "100 of 200 bytes", failed=True)
    row = booting_rows(parse(tr.to_json()), registered=[])[0]
    assert row.step == "initrd cut failed" and row.error == "100 of 200 bytes"
    # the installed set is still what a restarted kit reads back
    tr.step("52:54:00:6b:64:02", "installed")
    again = Tracker(table())
    again.load_json(tr.to_json())
    assert again.boot_choice("52:54:00:6b:64:02") == "local"


@pytest.mark.parametrize("text, message", [
    ("not json", "Expecting value"),
    ('{"nodes": 3}', "not a netboot state file"),
    ('{"nodes": [{"name": "node1"}]}', "a node entry lacks"),
])
def test_a_state_file_that_is_not_one_is_refused(text, message):
    from kadeploy.netboot.progress import parse
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_an_unreadable_state_file_is_one_warning_and_no_rows(tmp_path, caplog):
    from kadeploy.netboot.progress import BootStates
    states = BootStates(str(tmp_path / "nodes.json"))
    with caplog.at_level("WARNING", logger="kadeploy.server"):
        assert states.rows([]) == [] and states.rows([]) == []
        (tmp_path / "nodes.json").write_text(Tracker(table()).to_json())
        assert states.rows([]) == []
        (tmp_path / "nodes.json").write_text("{")
        assert states.rows([]) == []
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert warnings[0] == (f"boot states: cannot read {tmp_path}/nodes.json: No such file or directory; "
                           "the progress shows only registered nodes")
    assert warnings[1].startswith(f"boot states: {tmp_path}/nodes.json: Expecting")


def test_progress_lines_and_table_show_the_boot_step():
    from rich.console import Console

    from kadeploy.netboot.progress import BootNode, booting_rows
    from kadeploy.view.progress import NodeView, render_table, summary_line
    registered = [NodeView(0, "node3 (198.18.0.13:7001)", "-", "registered", 0, 0.0)]
    booting = booting_rows([BootNode(f"node{i}", "52:54:00:6b:64:01", None, "ipxe script", "", False)
                            for i in range(4, 16)], [])
    line = summary_line("hdr", registered + booting)
    assert line == ("hdr; nodes: 12 booting, 1 registered; booting: "
                    + ", ".join(f"node{i} (ipxe script)" for i in range(4, 14)) + ", and 2 more")
    console = Console(record=True, width=200)
    console.print(render_table("hdr", registered + booting[:1]))
    assert "booting: ipxe script" in console.export_text()


def test_the_image_must_keep_the_modules_an_install_needs():
    from kadeploy.netboot.build import REQUIRED_MODULES, missing_modules
    files = [f"/lib/modules/6.1/kernel/fs/{m}.ko.xz" for m in REQUIRED_MODULES if m != "vfat"]
    assert missing_modules(files, "") == ["vfat"]
    assert missing_modules(files + ["/lib/modules/6.1/kernel/fs/fat/vfat.ko"], "") == []
    assert missing_modules(files, "kernel/fs/fat/vfat.ko\n") == []          # built in
    assert missing_modules(["/x/nls-cp437.ko"], "", wanted=["nls_cp437"]) == []


@pytest.mark.parametrize("parse,text,message", [
    (nodetable.parse_csv, 'name,mac\n"' + "a" * 200_000 + '"\n', "t:2: not CSV: field larger than field limit (131072)"),
    (nodetable.parse_csv, "name,mac\n\n# x\nn1,52:54:00:00:00:01,extra\n", "t:4: row 1: 3 columns, the header has 2"),
    (nodetable.parse_csv, "name,mac\n# x\nn1,52:54:00:00:00\n", "t:3: row 1: mac '52:54:00:00:00' is not a MAC address (like 52:54:00:12:34:56)"),
    (nodetable.parse_toml, "node = [1]\n", "t: node 1: a node holds only strings and numbers (name, mac, address, ...)"),
    (nodetable.parse_toml, '[[node]]\nname = "n1"\nmac = "52:54:00:00:00:01"\nrack = { a = 1 }\n',
     "t: node 1: a node holds only strings and numbers (name, mac, address, ...)"),
    (nodetable.parse_toml, "node = " + "[" * 2000, "t:1: not valid TOML here: nested too deeply"),
])
def test_odd_tables_fail_in_one_line(parse, text, message):
    """Found by fuzzing (tests/test_fuzz_inputs.py): csv.Error, AttributeError, RecursionError."""
    with pytest.raises(UsageError) as e:
        parse(text, "t")
    assert str(e.value) == message


def test_a_table_that_is_not_utf8(tmp_path):
    path = tmp_path / "nodes.csv"
    path.write_bytes(b"name,mac\n\xff\n")
    with pytest.raises(UsageError, match=rf"^{path}: not UTF-8 text$"):
        nodetable.load(str(path))


def test_the_kit_saves_its_state_per_tick_and_an_install_at_once(tmp_path, monkeypatch):
    """On a mass boot every step rewrote the whole nodes.json under the lock that DHCP
    and HTTP share: steps are now saved once per tick of the kit's loop, installs at
    once (a restarted kit must not install the node again)."""
    import json
    from kadeploy.netboot import serve
    writes = []
    real = serve.write_text_atomically
    monkeypatch.setattr(serve, "write_text_atomically", lambda path, text: (writes.append(text), real(path, text)))
    many = nodetable.NodeTable([nodetable.NodeEntry(name=f"n{i}", mac=f"52:54:00:00:{i >> 8:02x}:{i & 255:02x}")
                                for i in range(300)])
    svc = serve.NetbootService(serve.ServeConfig(image_dir=tmp_path, interface="br0", table=many,
                                                 state_dir=tmp_path))
    with svc.lock:
        for step in ("dhcp ack", "ipxe script", "kernel sent"):
            for node in many:
                svc.tracker.event(BootEvent(mac=node.mac, step=step))
    assert writes == []
    svc._save_if_changed()
    svc._save_if_changed()                      # nothing new: nothing written
    assert len(writes) == 1
    saved = json.loads((tmp_path / serve.STATE_FILE).read_text())
    assert len(saved["nodes"]) == 300 and {n["step"] for n in saved["nodes"]} == {"kernel sent"}
    with svc.lock:
        svc.tracker.event(BootEvent(mac=many.nodes[7].mac, step="installed"))
    assert len(writes) == 2
    assert list(json.loads((tmp_path / serve.STATE_FILE).read_text())["installed"]) == [many.nodes[7].mac]
