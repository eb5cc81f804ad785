"""The catalog: packaged rows, catalog folders, the online catalog over loopback, this machine."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from taskstack.compiler import catalog as catalog_module
from taskstack.compiler.catalog import cache_dir, load_catalog, load_directory, load_packaged
from taskstack.compiler.machine import local_offer, parse_nvidia_smi, short_gpu_name
from taskstack.errors import ConfigError

PACKAGED_CSV = Path(catalog_module.__file__).parent / "data" / "offers.csv"


def test_packaged_catalog_has_every_row_of_the_csv() -> None:
    loaded = load_packaged()

    assert len(loaded.offers) == 138
    assert [sum(o.backend == b for o in loaded.offers) for b in ("aws", "gcp", "azure")] == [
        55,
        59,
        24,
    ]
    assert loaded.backends == ("aws", "gcp", "azure")
    assert loaded.source.kind == "packaged"
    assert loaded.source.describe().startswith("packaged catalog (2026-12-03, ")


def test_sources_travel_with_the_packaged_rows() -> None:
    sources = PACKAGED_CSV.with_name("SOURCES.md").read_text(encoding="utf-8")

    assert "138 rows" in sources


@pytest.mark.parametrize(
    ("instance_type", "efa", "flags"),
    [
        ("p4d.24xlarge", 4, ("efa",)),
        ("p5.48xlarge", 32, ("efa",)),
        ("p5en.48xlarge", 16, ("efa",)),
        ("g5.48xlarge", 1, ("efa",)),
        ("trn1.32xlarge", 8, ("efa",)),
        ("g5.xlarge", 0, ()),
        ("p3.2xlarge", 0, ()),
    ],
)
def test_efa_flag_and_interface_count_are_kept(
    instance_type: str, efa: int, flags: tuple[str, ...]
) -> None:
    offer = next(o for o in load_packaged().offers if o.instance_type == instance_type)

    assert (offer.efa_interfaces, offer.flags) == (efa, flags)


@pytest.mark.parametrize(
    ("name", "generation", "chips"),
    [("v2-8", "v2", 4), ("v4-8", "v4", 4), ("v5litepod-8", "v5e", 8), ("v5p-8", "v5p", 4)],
)
def test_tpu_slices_carry_generation_and_chips(name: str, generation: str, chips: int) -> None:
    offer = next(o for o in load_packaged().offers if o.instance_type == name)

    assert offer.tpu is not None
    assert (offer.tpu.name, offer.tpu.generation, offer.tpu.chips) == (name, generation, chips)
    assert (offer.gpu_vendor, offer.gpu_name, offer.gpu_count) == ("google", name, 1)


def test_gcp_zones_come_from_provider_data() -> None:
    offer = next(o for o in load_packaged().offers if o.instance_type == "a2-highgpu-1g")

    assert offer.region == "us-central1"
    assert offer.zones == ("us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f")


def test_offline_environment_chooses_the_packaged_catalog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(catalog_module, "_download", _forbidden_download)

    assert load_catalog().source.kind == "packaged"


def test_catalog_folder_with_a_combined_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = PACKAGED_CSV.read_text(encoding="utf-8").splitlines()
    (tmp_path / "offers.csv").write_text("\n".join(rows[:4]) + "\n", encoding="utf-8")
    monkeypatch.setenv("TASKSTACK_CATALOG", str(tmp_path))

    loaded = load_catalog()

    assert [o.instance_type for o in loaded.offers] == ["g4dn.xlarge"] * 3
    assert loaded.source.kind == "directory"
    assert str(tmp_path) in loaded.source.describe()


def test_gpuhunt_files_per_cloud_with_gcp_zone_rows_become_region_offers(
    tmp_path: Path,
) -> None:
    _write_gpuhunt_files(tmp_path)

    loaded = load_directory(tmp_path)

    gcp = [o for o in loaded.offers if o.backend == "gcp"]
    assert [(o.region, o.zones, o.price) for o in gcp] == [
        ("us-central1", ("us-central1-a", "us-central1-b"), 0.73),
        ("us-central1", ("us-central1-c",), 0.8),
    ]
    assert {o.backend for o in loaded.offers} == {"aws", "gcp", "azure"}


def test_catalog_folder_without_a_catalog_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKSTACK_CATALOG", str(tmp_path))

    with pytest.raises(ConfigError, match="TASKSTACK_CATALOG: .* holds no `offers.csv`"):
        load_catalog()


@pytest.mark.parametrize(
    ("name", "header", "missing"),
    [
        ("offers.csv", "provider,name,price", "columns instance_name, location, cpu, memory,"),
        (
            "offers.csv",
            "instance_name,location,price,cpu,memory,gpu_count,spot",
            "column provider;",
        ),
        ("aws.csv", "instance_name,location,price,cpu,memory,gpu_count", "column spot;"),
    ],
)
def test_a_catalog_file_without_the_needed_columns_is_named(
    tmp_path: Path, name: str, header: str, missing: str
) -> None:
    (tmp_path / name).write_text(f"{header}\naws,x,1\n")

    with pytest.raises(ConfigError, match="TASKSTACK_CATALOG: ") as caught:
        load_directory(tmp_path)

    assert f"{tmp_path / name} lacks the {missing}" in str(caught.value)


def test_a_catalog_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    (tmp_path / "offers.csv").write_bytes(b"\xff\xfe\x00binary")

    with pytest.raises(ConfigError, match=r"TASKSTACK_CATALOG: cannot read .*offers.csv"):
        load_directory(tmp_path)


def test_malformed_rows_are_skipped(tmp_path: Path) -> None:
    rows = PACKAGED_CSV.read_text(encoding="utf-8").splitlines()
    broken = rows[1].replace(",0.526,", ",not-a-price,")
    (tmp_path / "offers.csv").write_text("\n".join([rows[0], broken, rows[2]]) + "\n")

    loaded = load_directory(tmp_path)

    assert [o.region for o in loaded.offers] == ["us-west-2"]


# Rows of the packaged file with one column changed: gpuhunt's reading rules at their edges.
EDGE_ROWS = [
    {},
    {"price": "not-a-price"},
    {"price": ""},
    {"cpu": "4.0"},
    {"cpu": " 8 "},
    {"memory": "nan"},
    {"spot": "TRUE"},
    {"spot": "yes"},
    {"gpu_vendor": "NVIDIA"},
    {"gpu_vendor": "bogus"},
    {"gpu_vendor": ""},
    {"gpu_vendor": "", "gpu_count": "0"},
    {"gpu_vendor": "", "gpu_name": "tpu-v5p-8"},
    {"gpu_vendor": "amd", "gpu_name": "tpu-v5p-8"},
    {"gpu_vendor": "google", "gpu_name": "v5litepod-8", "location": "us-west4-a"},
    {"gpu_count": "0", "gpu_memory": "lots"},
    {"gpu_count": "2.5"},
    {"cpu_arch": "ARM"},
    {"cpu_arch": ""},
    {"cpu_arch": "riscv"},
    {"disk_size": "50.4"},
    {"disk_size": "big"},
    {"flags": " efa  other "},
    {"flags": "efa", "provider_data": '{"efa_interfaces": 3}'},
    {"provider_data": ""},
    {"provider_data": "{broken"},
    {"location": "us-central1-b", "provider_data": '{"zones": ["us-central1-b"]}'},
]


@pytest.mark.parametrize("changes", EDGE_ROWS, ids=lambda changes: repr(changes))
def test_rows_are_read_as_gpuhunt_reads_them(changes: dict[str, str]) -> None:
    from gpuhunt._internal.storage import item_from_row

    header, first = list(csv.reader(PACKAGED_CSV.read_text(encoding="utf-8").splitlines()))[:2]
    row = {**dict(zip(header, first, strict=True)), **changes}
    backend = "gcp" if "us-central1" in row["location"] or "us-west4" in row["location"] else "aws"
    try:
        item = item_from_row(row, provider=backend)
    except ValueError:
        item = None

    offers = list(catalog_module._offers_from_csv(_csv_text([{**row, "provider": backend}])))

    if item is None:
        assert offers == []
        return
    (offer,) = offers
    with_gpu = bool(item.gpu_count)
    assert offer.backend == item.provider
    assert offer.instance_type == item.instance_name
    assert (offer.region, *offer.zones) == (
        (item.location[:-2], item.location) if backend == "gcp" else (item.location,)
    )
    assert repr((offer.price, offer.cpu, offer.memory_gb, offer.spot)) == repr(
        (item.price, item.cpu, item.memory, item.spot)
    )
    assert offer.cpu_arch == item.cpu_arch.value
    assert offer.gpu_count == item.gpu_count
    assert offer.gpu_name == (item.gpu_name if with_gpu else None)
    assert offer.gpu_vendor == (item.gpu_vendor.value if with_gpu else None)
    assert offer.gpu_memory_gb == (item.gpu_memory if with_gpu else None)
    assert offer.disk_fixed == (item.disk_size is not None)
    assert offer.flags == tuple(item.flags)
    assert offer.provider_data == item.provider_data


def test_a_row_whose_provider_data_is_not_an_object_is_skipped() -> None:
    header, first = list(csv.reader(PACKAGED_CSV.read_text(encoding="utf-8").splitlines()))[:2]
    row = dict(zip(header, first, strict=True))

    offers = list(catalog_module._offers_from_csv(_csv_text([{**row, "provider_data": "[1]"}])))

    assert offers == []


def test_the_packaged_catalog_is_read_without_importing_gpuhunt() -> None:
    # A fresh interpreter: gpuhunt is imported in this one.
    script = (
        "import json, sys\n"
        "from taskstack.compiler.catalog import load_packaged\n"
        "offers = load_packaged().offers\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'gpuhunt', 'requests'})\n"
        "print(json.dumps([len(offers), heavy]))\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [len(load_packaged().offers), []]


# --- The online catalog, served on loopback in gpuhunt's layout -------------------------------


class _Bucket(BaseHTTPRequestHandler):
    """gpuhunt's bucket layout: `/{provider}/version` and `/{provider}/{v}/catalog.zip`."""

    files: dict[str, bytes] = {}
    delay = 0.0
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self.hits.append(self.path)
        time.sleep(self.delay)
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[_Bucket]]:
    folder = tmp_path / "gpuhunt"
    folder.mkdir()
    _write_gpuhunt_files(folder)
    handler = type("Bucket", (_Bucket,), {"files": {}, "delay": 0.0, "hits": []})
    for name in ("aws", "gcp", "azure"):
        handler.files[f"/{name}/version"] = b"20261203\n"
        handler.files[f"/{name}/20261203/catalog.zip"] = _zipped(folder / f"{name}.csv")

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("GPUHUNT_CATALOG_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("TASKSTACK_OFFLINE")
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_online_catalog_is_downloaded_then_reused_from_the_state_folder(
    bucket: type[_Bucket],
) -> None:
    first = load_catalog()
    hits_after_first = len(bucket.hits)
    second = load_catalog()

    assert first.source.kind == "online"
    assert {o.backend for o in first.offers} == {"aws", "gcp", "azure"}
    assert (cache_dir() / "aws.csv").is_file()
    assert second.source.kind == "cache"
    assert second.offers == first.offers
    assert len(bucket.hits) == hits_after_first == 6


def test_a_stalled_online_catalog_falls_back_to_the_packaged_one_in_time(
    bucket: type[_Bucket], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket.delay = 3.0
    monkeypatch.setattr(catalog_module, "ONLINE_DEADLINE", 0.3)

    started = time.monotonic()
    loaded = load_catalog()
    elapsed = time.monotonic() - started
    again = load_catalog()

    assert loaded.source.kind == "packaged"
    assert elapsed < 2.0
    # The failure is remembered: the next command does not wait on the network again.
    assert again.source.kind == "packaged"
    assert len(bucket.hits) == 1


def test_a_missing_online_file_keeps_the_older_download(
    bucket: type[_Bucket], monkeypatch: pytest.MonkeyPatch
) -> None:
    load_catalog()
    os.utime(cache_dir() / "downloaded", (0, 0))
    bucket.files.pop("/azure/20261203/catalog.zip")

    loaded = load_catalog()

    assert loaded.source.kind == "cache"
    assert {o.backend for o in loaded.offers} == {"aws", "gcp", "azure"}


# --- This machine ----------------------------------------------------------------------------


def test_local_offer_describes_this_machine() -> None:
    offer = local_offer()

    assert (offer.backend, offer.price, offer.spot, offer.disk_fixed) == (
        "local",
        0.0,
        False,
        True,
    )
    assert offer.cpu == os.cpu_count()
    assert offer.memory_gb > 0.5 and offer.disk_gb > 1


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("NVIDIA A100-SXM4-80GB, 81920\n" * 8, ("A100", 8, 80)),
        ("NVIDIA H100 80GB HBM3, 81559\nNVIDIA H100 80GB HBM3, 81559\n", ("H100", 2, 80)),
        ("NVIDIA A10G, 23028\n", ("A10G", 1, 24)),
        ("Tesla T4, 15360\n", ("T4", 1, 16)),
        ("NVIDIA GeForce RTX 4090, 24564\n", ("RTX4090", 1, 24)),
        ("NVIDIA L40S, 46068\n", ("L40S", 1, 48)),
    ],
)
def test_nvidia_smi_output_is_read_as_gpuhunt_names(
    output: str, expected: tuple[str, int, int]
) -> None:
    # Real GPUs are not on these machines; the lines are nvidia-smi's documented CSV form.
    gpus = parse_nvidia_smi(output)

    assert gpus is not None
    assert (gpus.name, gpus.count, gpus.memory_gb) == expected


def test_no_gpu_lines_mean_no_gpus() -> None:
    assert parse_nvidia_smi("") is None
    assert short_gpu_name("Some Future GPU") == "Some Future GPU"


# --- Helpers ---------------------------------------------------------------------------------


def _forbidden_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("the catalog went online")


def _write_gpuhunt_files(folder: Path) -> None:
    """One small gpuhunt v2 file per cloud (no provider column; GCP rows are per zone)."""
    header = PACKAGED_CSV.read_text(encoding="utf-8").splitlines()[0].split(",")[1:]
    rows = {
        "aws": [["g4dn.xlarge", "us-east-1", "0.526", "4", "16.0", "1", "T4", "16.0", "False"]],
        "gcp": [
            ["n1-standard-8", "us-central1-a", "0.73", "8", "30.0", "1", "T4", "16.0", "False"],
            ["n1-standard-8", "us-central1-b", "0.73", "8", "30.0", "1", "T4", "16.0", "False"],
            ["n1-standard-8", "us-central1-c", "0.8", "8", "30.0", "1", "T4", "16.0", "False"],
        ],
        "azure": [
            ["Standard_NC4as_T4_v3", "eastus", "0.526", "4", "28.0", "1", "T4", "16.0", "False"]
        ],
    }
    for name, items in rows.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            for item in items:
                writer.writerow([*item, "", "nvidia", "", "x86", "{}"])


def _csv_text(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _zipped(path: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.write(path, arcname=path.name)
    return buffer.getvalue()
