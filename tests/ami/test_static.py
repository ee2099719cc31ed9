"""The image's files checked without building anything (seconds): ``packer validate`` on the
template, ``cloud-init schema`` on the user-data, shellcheck on every shell script of ami/ and
scripts/, and the units read as systemd reads them (every variable they use is one that
provisioning or tfos-node-env writes). A missing tool skips its test with the package to
install, or fails it under CI (CI=true)."""
import glob
import os
import re
import subprocess

import pytest

import ami_units
from ami_support import AMI, REPO, require

UNITS = sorted(glob.glob(os.path.join(AMI, "files", "systemd", "*.service")))
USER_DATA = sorted(glob.glob(os.path.join(AMI, "cloud-init", "*.yaml")))
TEMPLATE = os.path.join(AMI, "tfos.pkr.hcl")

# Scripts of scripts/ that still have findings of shellcheck 0.9 (strict: once one is clean,
# this list must lose its entry). None now: every script is clean.
KNOWN_FINDINGS: dict[str, str] = {}


def shell_scripts():
    """Every file of ami/, scripts/ and tests/ami/ that is a shell script (by name or #!)."""
    found = []
    for top in ("ami", "scripts", os.path.join("tests", "ami")):
        for path in sorted(glob.glob(os.path.join(REPO, top, "**", "*"), recursive=True)):
            if not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                first = f.readline()
            if path.endswith(".sh") or re.match(rb"#!\s*/(usr/)?bin/(env )?(ba)?sh\b", first):
                found.append(os.path.relpath(path, REPO))
    return found


def run(argv, **kwargs):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


def offline(argv):
    """``argv`` in a network namespace of its own where we may make one (root): a validator
    then cannot reach any cloud API, whatever it would try."""
    if os.geteuid() == 0 and require("unshare", "util-linux"):
        return ["unshare", "--net", "--", *argv]
    return argv


# -- Packer ------------------------------------------------------------------------------------
@pytest.fixture
def source_tarball(tmp_path):
    """A stand-in for ami/pack-source.sh's tarball: the file provisioner only checks it exists."""
    path = tmp_path / "tfos-src.tar.gz"
    path.write_bytes(b"")
    return str(path)


def packer(*args, source):
    require("packer", "packer")
    env = {**os.environ, "CHECKPOINT_DISABLE": "1"}  # no version check over the network
    return run(offline(["packer", *args, "-var", f"tfos_source={source}", TEMPLATE]), env=env)


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_packer_validate(variant, source_tarball):
    proc = packer("validate", "-var", f"variant={variant}", source=source_tarball)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_packer_refuses_an_unknown_variant(source_tarball):
    proc = packer("validate", "-var", "variant=tpu", source=source_tarball)
    assert proc.returncode != 0
    assert 'must be "cpu" or "gpu"' in proc.stdout + proc.stderr


def test_packer_template_is_formatted():
    require("packer", "packer")
    proc = run(["packer", "fmt", "-check", "-diff", TEMPLATE],
               env={**os.environ, "CHECKPOINT_DISABLE": "1"})
    assert proc.returncode == 0, "packer fmt ami/tfos.pkr.hcl would change:\n" + proc.stdout


# -- cloud-init -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", USER_DATA, ids=os.path.basename)
def test_cloud_init_schema(path):
    require("cloud-init", "cloud-init")
    proc = run(["cloud-init", "schema", "--config-file", path])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def node_env_settings():
    """The cluster.env settings tfos-node-env documents (its header)."""
    with open(os.path.join(AMI, "files", "bin", "tfos-node-env")) as f:
        header = f.read().split("set -euo pipefail", 1)[0]
    return set(re.findall(r"\b(TFOS_[A-Z_]+)\b", header))


@pytest.mark.parametrize("path", USER_DATA, ids=os.path.basename)
def test_user_data_writes_settings_the_image_reads(path):
    yaml = pytest.importorskip("yaml")
    with open(path) as f:
        data = yaml.safe_load(f)
    (cluster_env,) = [w for w in data["write_files"] if w["path"] == "/etc/tfos/cluster.env"]
    keys = {line.split("=", 1)[0] for line in cluster_env["content"].splitlines()
            if line.strip() and not line.startswith("#")}
    assert keys <= node_env_settings(), f"settings tfos-node-env does not know: {keys - node_env_settings()}"
    role = re.search(r"^TFOS_ROLE=(\w+)$", cluster_env["content"], re.M).group(1)
    started = [" ".join(c) for c in data["runcmd"]]
    assert f"systemctl enable --now tfos-spark-{role}.service" in started


# -- shellcheck -----------------------------------------------------------------------------------
@pytest.mark.parametrize("script", shell_scripts())
def test_shellcheck(script, request):
    require("shellcheck", "shellcheck")
    if script in KNOWN_FINDINGS:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FINDINGS[script], strict=True))
    proc = run(["shellcheck", "--external-sources", script], cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_scripts_are_all_checked():
    scripts = shell_scripts()
    for name in ("ami/provision.sh", "ami/files/bin/tfos-node-env", "ami/files/bin/tfos-firewall",
                 "scripts/cluster.sh", "scripts/test_ami.sh", "tests/ami/build_root.sh"):
        assert name in scripts


# -- the units ------------------------------------------------------------------------------------
def written_keys():
    """Variables the units may use: spark.env (provision.sh) and node.env (tfos-node-env)."""
    keys = set()
    with open(os.path.join(AMI, "provision.sh")) as f:
        spark_env = f.read().split("cat >/etc/tfos/spark.env <<EOF", 1)[1].split("\nEOF", 1)[0]
    keys |= set(re.findall(r"^([A-Z_]+)=", spark_env, re.M))
    with open(os.path.join(AMI, "files", "bin", "tfos-node-env")) as f:
        node_env = f.read().split('cat >"$tmp" <<ENV', 1)[1].split("\nENV", 1)[0]
    keys |= set(re.findall(r"^([A-Z_]+)=", node_env, re.M))
    return keys


@pytest.mark.parametrize("path", UNITS, ids=os.path.basename)
def test_unit_commands_use_only_variables_that_are_written(path):
    unit = ami_units.load(path)
    env = {k: "x" for k in written_keys()}
    for key in ("ExecStart", "ExecStop"):
        for command in unit.commands(key):
            ami_units.expand(command.argv, env)   # raises on a variable nobody writes


@pytest.mark.parametrize("path", UNITS, ids=os.path.basename)
def test_unit_programs_are_installed_by_provisioning(path):
    for command in ami_units.load(path).commands():
        program = command.argv[0]
        if program.startswith("/opt/tfos/bin/"):
            assert os.path.exists(os.path.join(AMI, "files", "bin", os.path.basename(program)))
        else:
            assert program.startswith("/opt/tfos/venv/bin/"), program


def test_daemons_read_both_environment_files():
    for name in ("tfos-spark-master.service", "tfos-spark-worker.service"):
        unit = ami_units.load(os.path.join(AMI, "files", "systemd", name))
        assert unit.environment_files() == [("/etc/tfos/spark.env", True),
                                            ("/run/tfos/node.env", True)]
        assert unit.user == "spark"


# -- ami_units, the reader the chroot test runs the units with ------------------------------------
def test_expand_braced_keeps_one_argument_and_bare_splits():
    env = {"A": "one two", "B": "x"}
    assert ami_units.expand(("run", "${A}", "--b=${B}", "$A"), env) == \
        ["run", "one two", "--b=x", "one", "two"]


def test_expand_refuses_an_unset_variable():
    with pytest.raises(ami_units.UnitError, match=r"\$\{NOPE\}"):
        ami_units.expand(("run", "${NOPE}"), {})


def test_environment_file_quotes_and_comments(tmp_path):
    path = tmp_path / "env"
    path.write_text('# c\n; c\n\nA=1\n B = "two words" \nC=\'x y\'\nD="q\\"d"\n')
    assert ami_units.read_environment_file(str(path)) == [
        ("A", "1"), ("B", "two words"), ("C", "x y"), ("D", 'q"d')]


def test_unit_prefixes_and_specifiers(tmp_path):
    path = tmp_path / "t.service"
    path.write_text("[Service]\nType=oneshot\nExecStart=-/bin/true\nExecStart=+/bin/id\n"
                    "ExecStop=/bin/echo %i\nLimitMEMLOCK=infinity\nSuccessExitStatus=1 143\n")
    unit = ami_units.load(str(path))
    first, second = unit.commands()
    assert first.ignore_failure and not first.privileged
    assert second.privileged
    assert unit.limits == {"RLIMIT_MEMLOCK": None}
    assert unit.success_exit_status == {0, 1, 143}
    with pytest.raises(ami_units.UnitError, match="specifiers"):
        unit.commands("ExecStop")
