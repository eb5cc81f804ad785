"""The Terraform engine's process handling and error mapping, with a scripted `terraform`.

The real CLI runs in `tests/e2e/test_terraform_moto.py`; here a small shell script stands in
for it, so failures that moto cannot produce (a held lock, no capacity) and Ctrl+C can be
driven on purpose. The script records its arguments and session id, then answers as
Terraform does for the scenario the test chose.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from taskstack.errors import ConcurrentUpdateError, EngineMissingError, NoCapacityError, StackError
from taskstack.home import taskstack_home
from taskstack.settings import Settings, TerraformStateSettings, load_settings
from taskstack.stacks import terraform
from taskstack.stacks.terraform import TerraformEngine, backend_block
from tests.testbed.plans import aws_plan

SCRIPT = """\
#!/bin/bash
# Stand-in terraform: log the call, then print the answer the test chose for
# $TF_SCENARIO and this command (falling back to the `ok` one) and exit with its code.
echo "$* sid=$(ps -o sid= -p $$ | tr -d ' ')" >> "$TF_CALLS"
answer="$TF_ANSWERS/$TF_SCENARIO-$1"
[ -f "$answer.out" ] || answer="$TF_ANSWERS/ok-$1"
if [ "$TF_SCENARIO-$1" = slow-apply ]; then
  trap 'echo interrupted >> "$TF_CALLS"; exit 1' INT
  cat "$answer.out"
  for i in $(seq 1 100); do sleep 0.1; done
  exit 0
fi
[ "$1" = plan ] && touch tfplan
[ -f "$answer.out" ] && cat "$answer.out"
exit "$(cat "$answer.code" 2>/dev/null || echo 0)"
"""


def _diagnostic(summary: str, detail: str) -> dict:
    diagnostic = {"summary": summary, "detail": detail}
    return {"@level": "error", "type": "diagnostic", "diagnostic": diagnostic}


def _hook(kind: str, message: str) -> dict:
    resource = {"addr": "aws_vpc.net", "resource_type": "aws_vpc"}
    return {"type": kind, "@message": message, "hook": {"resource": resource, "action": "create"}}


CHANGES = {"address": "aws_vpc.net", "mode": "managed", "type": "aws_vpc"}
NODE = {"rank": 0, "instance_id": "i-1", "public_ip": "198.51.100.7", "private_ip": "10.200.0.7"}

# (scenario, command) -> (JSON lines printed, exit code)
ANSWERS: dict[tuple[str, str], tuple[list, int]] = {
    ("ok", "show"): ([{"resource_changes": [{**CHANGES, "change": {"actions": ["create"]}}]}], 0),
    ("ok", "output"): ([[NODE]], 0),
    ("ok", "apply"): (
        [
            _hook("apply_start", "aws_vpc.net: Creating..."),
            _hook("apply_complete", "aws_vpc.net: Creation complete"),
            {"type": "change_summary", "@message": "Apply complete! Resources: 1 added"},
        ],
        0,
    ),
    ("slow", "apply"): ([_hook("apply_start", "aws_vpc.net: Creating...")], 0),
    ("lock", "plan"): ([_diagnostic("Error acquiring the state lock", "held elsewhere")], 1),
    (
        "capacity",
        "plan",
    ): ([_diagnostic("creating EC2 Instance", "InsufficientInstanceCapacity: none left")], 1),
    ("broken", "plan"): ([_diagnostic("Invalid provider configuration", "no region")], 1),
}


@pytest.fixture
def fake_terraform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The scripted terraform; returns the file it logs its calls to."""
    binary = tmp_path / "bin" / "terraform"
    binary.parent.mkdir()
    binary.write_text(SCRIPT)
    binary.chmod(0o755)
    answers = tmp_path / "answers"
    answers.mkdir()
    for (scenario, command), (lines, code) in ANSWERS.items():
        text = "".join(json.dumps(line) + "\n" for line in lines)
        (answers / f"{scenario}-{command}.out").write_text(text)
        (answers / f"{scenario}-{command}.code").write_text(str(code))
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("TF_ANSWERS", str(answers))
    monkeypatch.setenv("PATH", f"{binary.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("TF_CALLS", str(calls))
    monkeypatch.setenv("TF_SCENARIO", "ok")
    return calls


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    environ = {"TASKSTACK_BACKENDS": "aws", "AWS_SECRET_ACCESS_KEY": "never-in-a-file"}
    return load_settings(path=tmp_path / "none.yml", environ=environ)


def _engine(settings: Settings) -> TerraformEngine:
    return TerraformEngine(settings, user_data=lambda plan: "#!/bin/sh\n")


def test_preview_then_up_runs_the_commands_in_order_in_their_own_session(
    settings: Settings, fake_terraform: Path
) -> None:
    plan = aws_plan("train", nodes=1)
    engine = _engine(settings)
    events = []

    preview = engine.preview(plan)
    nodes = engine.up(plan, on_event=events.append)

    calls = fake_terraform.read_text().splitlines()
    commands = [call.split()[0] for call in calls]
    assert commands == ["init", "workspace", "plan", "show", "apply", "output"]
    assert "select -or-create train" in calls[1]
    assert "apply -input=false -json tfplan" in calls[4]
    assert all(int(call.rsplit("sid=", 1)[1]) != os.getsid(0) for call in calls)
    assert preview.counts == {"aws_vpc": 1}
    assert [(n.rank, n.address, n.private_ip) for n in nodes] == [
        (0, "198.51.100.7", "10.200.0.7")
    ]
    assert [(e.resource_name, e.status) for e in events if e.kind == "resource"] == [
        ("aws_vpc.net", "started"),
        ("aws_vpc.net", "done"),
    ]
    workdir = taskstack_home() / "terraform" / "runs" / "train"
    assert "never-in-a-file" not in (workdir / "main.tf.json").read_text()


def test_up_refuses_a_plan_other_than_the_previewed_one(
    settings: Settings, fake_terraform: Path
) -> None:
    engine = _engine(settings)
    engine.preview(aws_plan("train", instance_type="t3.micro"))

    with pytest.raises(StackError, match="plan of run train changed since its preview"):
        engine.up(aws_plan("train", instance_type="t3.large"))

    assert "apply" not in fake_terraform.read_text()


def test_up_without_a_preview_runs_nothing(settings: Settings, fake_terraform: Path) -> None:
    with pytest.raises(StackError, match="run train was not previewed"):
        _engine(settings).up(aws_plan("train"))

    assert not fake_terraform.exists()


@pytest.mark.parametrize(
    ("scenario", "error", "message"),
    [
        ("lock", ConcurrentUpdateError, "run train is being changed by another apply"),
        ("capacity", NoCapacityError, r"no capacity \(InsufficientInstanceCapacity\)"),
        ("broken", StackError, "terraform plan failed for run train: Invalid provider config"),
    ],
)
def test_terraform_failures_are_mapped(
    settings: Settings,
    fake_terraform: Path,
    monkeypatch: pytest.MonkeyPatch,
    scenario: str,
    error: type,
    message: str,
) -> None:
    monkeypatch.setenv("TF_SCENARIO", scenario)

    with pytest.raises(error, match=message) as caught:
        _engine(settings).preview(aws_plan("train"))

    assert type(caught.value) is error


def test_a_missing_terraform_is_one_line_pointing_to_the_other_engine(
    settings: Settings, tmp_path: Path
) -> None:
    engine = TerraformEngine(settings, binary=str(tmp_path / "no-terraform"))

    with pytest.raises(EngineMissingError, match="--engine pulumi") as caught:
        engine.preview(aws_plan("train"))

    assert "\n" not in str(caught.value)
    assert not (taskstack_home() / "terraform" / "runs" / "train").exists()


def test_destroying_a_run_never_created_succeeds(settings: Settings, fake_terraform: Path):
    _engine(settings).destroy("never-made")

    assert "destroy" not in fake_terraform.read_text()


def test_ctrl_c_asks_terraform_to_stop_and_waits_for_it(
    fake_terraform: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_SCENARIO", "slow")
    log_path = tmp_path / "apply.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            ["terraform", "apply"], stdout=log_file, start_new_session=True, cwd=tmp_path
        )

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        terraform._follow(process, log_path, interrupt)

    assert process.returncode is not None
    assert time.monotonic() - started < 5
    assert "interrupted" in fake_terraform.read_text()


def test_every_run_is_a_workspace_of_one_backend() -> None:
    local = backend_block(TerraformStateSettings())
    s3 = backend_block(TerraformStateSettings(backend="s3", options={"bucket": "tf"}))

    state = taskstack_home() / "terraform" / "state"
    assert local == {
        "local": {"path": str(state / "default.tfstate"), "workspace_dir": str(state)}
    }
    assert s3 == {"s3": {"bucket": "tf", "key": "taskstack/terraform.tfstate"}}


def test_the_first_boot_script_reaches_terraform_as_a_literal(
    settings: Settings, fake_terraform: Path
) -> None:
    script = '#!/bin/sh\nmode="${1:-}"\necho "%{not a directive}" $${kept}\n'
    engine = TerraformEngine(settings, user_data=lambda plan: script)

    engine.preview(aws_plan("train", nodes=1))

    document = (taskstack_home() / "terraform" / "runs" / "train" / "main.tf.json").read_text()
    # In JSON syntax every string is a template: `$${` and `%%{` are the literal sequences.
    assert json.dumps('mode="$${1:-}"')[1:-1] in document
    assert json.dumps('echo "%%{not a directive}" $$${kept}')[1:-1] in document
