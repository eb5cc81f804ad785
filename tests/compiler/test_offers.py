"""Matching against the packaged catalog: exact offer sets, order, and no-match messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from taskstack.compiler.catalog import Catalog, load_packaged
from taskstack.compiler.config import parse_task
from taskstack.compiler.offers import (
    Offer,
    Requirements,
    find_offers,
    format_price,
    format_resources,
    tpu_hosts,
)
from taskstack.compiler.resources import ResourcesSpec
from taskstack.errors import OffersError

CLOUDS = ["aws", "gcp", "azure"]


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_packaged()


def requirements(resources: dict[str, Any], **policy: Any) -> Requirements:
    """Requirements as a task with these `resources:` and top-level fields would give."""
    spec = ResourcesSpec.model_validate(resources)
    return Requirements(**Requirements.resource_fields(spec), **policy)


def rows(offers: tuple[Offer, ...]) -> list[str]:
    return [
        f"{o.backend} {o.region} {o.instance_type} {format_price(o.price)}"
        + (" spot" if o.spot else "")
        for o in offers
    ]


PINNED = [
    pytest.param(
        {"gpu": "A100:80GB:8"},
        {},
        [
            "azure eastus Standard_ND96amsr_A100_v4 $32.77",
            "aws us-east-1 p4de.24xlarge $40.97",
            "aws us-west-2 p4de.24xlarge $40.97",
            "gcp us-east5 a2-ultragpu-8g $44.19",
        ],
        id="a100-80gb-8",
    ),
    pytest.param(
        {"gpu": "24GB..40GB:1.."},
        {},
        [
            "gcp us-east4 g2-standard-4 $0.7045",
            "gcp us-central1 g2-standard-4 $0.7068",
            "aws us-east-1 g6.xlarge $0.8048",
            "aws us-west-2 g6.xlarge $0.8048",
            "gcp us-east4 g2-standard-24 $1.99",
            "gcp us-central1 g2-standard-24 $2.00",
            "gcp us-east5 v6e-1 $2.70",
            "gcp europe-west4 v6e-1 $2.97",
            "azure eastus Standard_NV36ads_A10_v5 $3.20",
            "azure westus2 Standard_NV36ads_A10_v5 $3.20",
            "gcp us-central1 a2-highgpu-1g $3.67",
            "gcp us-east1 a2-highgpu-1g $3.67",
            "azure eastus Standard_NV72ads_A10_v5 $6.52",
            "azure westus2 Standard_NV72ads_A10_v5 $6.52",
            "gcp us-central1 a2-highgpu-2g $7.35",
            "gcp us-east1 a2-highgpu-2g $7.35",
            "gcp us-central1 g2-standard-96 $8.00",
            "aws us-east-1 g6.48xlarge $13.35",
            "azure eastus Standard_ND96asr_v4 $27.20",
            "azure westus2 Standard_ND96asr_v4 $27.20",
            "gcp us-central1 a2-highgpu-8g $29.39",
            "aws us-east-1 p4d.24xlarge $32.77",
            "aws us-west-2 p4d.24xlarge $32.77",
            "aws eu-west-1 p4d.24xlarge $35.40",
        ],
        id="gpu-mem-24-40-any-count",
    ),
    pytest.param(
        {"gpu": "A10G,A100"},
        {},
        [
            "aws us-east-1 g5.xlarge $1.01",
            "aws us-west-2 g5.xlarge $1.01",
            "aws eu-west-1 g5.xlarge $1.12",
            "azure eastus Standard_NC24ads_A100_v4 $3.67",
            "gcp us-central1 a2-highgpu-1g $3.67",
            "gcp us-east1 a2-highgpu-1g $3.67",
            "gcp us-east5 a2-ultragpu-1g $5.52",
            "azure eastus Standard_NC48ads_A100_v4 $7.35",
            "azure westus2 Standard_NC48ads_A100_v4 $7.35",
            "gcp us-central1 a2-highgpu-2g $7.35",
            "gcp us-east1 a2-highgpu-2g $7.35",
            "azure eastus Standard_NC96ads_A100_v4 $14.69",
            "aws us-east-1 g5.48xlarge $16.29",
            "aws us-west-2 g5.48xlarge $16.29",
            "azure eastus Standard_ND96asr_v4 $27.20",
            "azure westus2 Standard_ND96asr_v4 $27.20",
            "gcp us-central1 a2-highgpu-8g $29.39",
            "azure eastus Standard_ND96amsr_A100_v4 $32.77",
            "aws us-east-1 p4d.24xlarge $32.77",
            "aws us-west-2 p4d.24xlarge $32.77",
            "aws eu-west-1 p4d.24xlarge $35.40",
            "aws us-east-1 p4de.24xlarge $40.97",
            "aws us-west-2 p4de.24xlarge $40.97",
            "gcp us-east5 a2-ultragpu-8g $44.19",
        ],
        id="a10g-or-a100",
    ),
    pytest.param(
        {"gpu": "v5litepod-8"},
        {},
        [
            "gcp us-central1 v5litepod-8 $9.60",
            "gcp europe-west4 v5litepod-8 $12.48",
        ],
        id="v5litepod-8",
    ),
    pytest.param(
        {"gpu": "nvidia"},
        {},
        [
            "aws us-east-1 g4dn.xlarge $0.526",
            "aws us-west-2 g4dn.xlarge $0.526",
            "azure eastus Standard_NC4as_T4_v3 $0.526",
            "azure westus2 Standard_NC4as_T4_v3 $0.526",
            "aws eu-west-1 g4dn.xlarge $0.587",
            "gcp us-east4 g2-standard-4 $0.7045",
            "gcp us-central1 g2-standard-4 $0.7068",
            "gcp us-central1 n1-standard-8 $0.73",
            "gcp europe-west4 n1-standard-8 $0.7858",
            "aws us-east-1 g6.xlarge $0.8048",
            "aws us-west-2 g6.xlarge $0.8048",
            "aws us-east-1 g5.xlarge $1.01",
            "aws us-west-2 g5.xlarge $1.01",
            "aws eu-west-1 g5.xlarge $1.12",
            "gcp us-east4 g2-standard-24 $1.99",
            "gcp us-central1 g2-standard-24 $2.00",
            "gcp us-central1 n1-standard-8 $2.86",
            "aws us-east-1 p3.2xlarge $3.06",
            "aws us-west-2 p3.2xlarge $3.06",
            "azure eastus Standard_NV36ads_A10_v5 $3.20",
            "azure westus2 Standard_NV36ads_A10_v5 $3.20",
            "azure eastus Standard_NC24ads_A100_v4 $3.67",
            "gcp us-central1 a2-highgpu-1g $3.67",
            "gcp us-east1 a2-highgpu-1g $3.67",
            "aws us-east-1 g4dn.12xlarge $3.91",
            "azure eastus Standard_NC64as_T4_v3 $4.35",
            "gcp us-east5 a2-ultragpu-1g $5.52",
            "azure eastus Standard_NV72ads_A10_v5 $6.52",
            "azure westus2 Standard_NV72ads_A10_v5 $6.52",
            "azure eastus Standard_NC48ads_A100_v4 $7.35",
            "azure westus2 Standard_NC48ads_A100_v4 $7.35",
            "gcp us-central1 a2-highgpu-2g $7.35",
            "gcp us-east1 a2-highgpu-2g $7.35",
            "gcp us-central1 g2-standard-96 $8.00",
            "aws us-east-1 g6.48xlarge $13.35",
            "azure eastus Standard_NC96ads_A100_v4 $14.69",
            "aws us-east-1 g5.48xlarge $16.29",
            "aws us-west-2 g5.48xlarge $16.29",
            "azure eastus Standard_ND96asr_v4 $27.20",
            "azure westus2 Standard_ND96asr_v4 $27.20",
            "gcp us-central1 a2-highgpu-8g $29.39",
            "azure eastus Standard_ND96amsr_A100_v4 $32.77",
            "aws us-east-1 p4d.24xlarge $32.77",
            "aws us-west-2 p4d.24xlarge $32.77",
            "aws eu-west-1 p4d.24xlarge $35.40",
            "aws us-east-1 p4de.24xlarge $40.97",
            "aws us-west-2 p4de.24xlarge $40.97",
            "gcp us-east5 a2-ultragpu-8g $44.19",
            "aws us-east-1 p5en.48xlarge $84.80",
            "aws us-west-2 p5en.48xlarge $84.80",
            "gcp us-east4 a3-highgpu-8g $87.83",
            "aws us-east-1 p5.48xlarge $98.32",
            "aws us-west-2 p5.48xlarge $98.32",
            "azure eastus Standard_ND96isr_H100_v5 $98.32",
            "gcp europe-west4 a3-highgpu-8g $111.82",
        ],
        id="nvidia",
    ),
    pytest.param(
        {"gpu": 0, "cpu": "64.."},
        {},
        [
            "aws us-east-1 trn1.32xlarge $21.50",
            "aws us-west-2 trn1.32xlarge $21.50",
        ],
        id="no-gpu-cpu-64",
    ),
    pytest.param(
        {"memory": "200GB.."},
        {},
        [
            "azure eastus Standard_NV36ads_A10_v5 $3.20",
            "azure westus2 Standard_NV36ads_A10_v5 $3.20",
            "azure eastus Standard_NC24ads_A100_v4 $3.67",
            "azure eastus Standard_NC64as_T4_v3 $4.35",
            "gcp us-central1 v2-8 $4.50",
            "azure eastus Standard_NV72ads_A10_v5 $6.52",
            "azure westus2 Standard_NV72ads_A10_v5 $6.52",
            "azure eastus Standard_NC48ads_A100_v4 $7.35",
            "azure westus2 Standard_NC48ads_A100_v4 $7.35",
            "gcp us-central1 v3-8 $8.00",
            "gcp us-central1 g2-standard-96 $8.00",
            "gcp us-central1 v5litepod-8 $9.60",
            "gcp us-east5 v6e-4 $10.80",
            "gcp europe-west4 v5litepod-8 $12.48",
            "gcp us-central2 v4-8 $12.88",
            "aws us-east-1 g6.48xlarge $13.35",
            "azure eastus Standard_NC96ads_A100_v4 $14.69",
            "aws us-east-1 g5.48xlarge $16.29",
            "aws us-west-2 g5.48xlarge $16.29",
            "gcp us-east5 v5p-8 $16.80",
            "gcp europe-west4 v5p-8 $17.01",
            "aws us-east-1 trn1.32xlarge $21.50",
            "aws us-west-2 trn1.32xlarge $21.50",
            "gcp us-east5 v6e-8 $21.60",
            "gcp europe-west4 v6e-8 $23.76",
            "azure eastus Standard_ND96asr_v4 $27.20",
            "azure westus2 Standard_ND96asr_v4 $27.20",
            "gcp us-central1 a2-highgpu-8g $29.39",
            "azure eastus Standard_ND96amsr_A100_v4 $32.77",
            "aws us-east-1 p4d.24xlarge $32.77",
            "aws us-west-2 p4d.24xlarge $32.77",
            "aws eu-west-1 p4d.24xlarge $35.40",
            "aws us-east-1 p4de.24xlarge $40.97",
            "aws us-west-2 p4de.24xlarge $40.97",
            "gcp us-east5 a2-ultragpu-8g $44.19",
            "aws us-east-1 p5en.48xlarge $84.80",
            "aws us-west-2 p5en.48xlarge $84.80",
            "gcp us-east4 a3-highgpu-8g $87.83",
            "aws us-east-1 p5.48xlarge $98.32",
            "aws us-west-2 p5.48xlarge $98.32",
            "azure eastus Standard_ND96isr_H100_v5 $98.32",
            "gcp europe-west4 a3-highgpu-8g $111.82",
        ],
        id="memory-200gb",
    ),
    pytest.param(
        {},
        {"spot_policy": "spot"},
        [
            "azure eastus Standard_F4s_v2 $0.01859 spot",
            "aws us-east-1 t3.large $0.0266 spot",
            "gcp us-central1 e2-standard-2 $0.02679 spot",
            "aws us-east-1 m6i.large $0.033 spot",
            "gcp us-central1 n2-standard-4 $0.05552 spot",
            "aws us-east-1 m5.xlarge $0.0597 spot",
            "azure eastus Standard_NC4as_T4_v3 $0.0627 spot",
            "aws us-east-1 c5.xlarge $0.0639 spot",
            "aws us-east-1 g4dn.xlarge $0.1845 spot",
            "gcp us-central1 v5litepod-1 $0.213 spot",
            "gcp us-central1 n1-standard-8 $0.2363 spot",
            "gcp us-central1 g2-standard-4 $0.2818 spot",
            "aws us-east-1 g6.xlarge $0.3879 spot",
            "aws us-east-1 g5.xlarge $0.397 spot",
            "azure eastus Standard_NC24ads_A100_v4 $0.4444 spot",
            "aws us-east-1 p3.2xlarge $0.5197 spot",
            "gcp us-east5 v6e-1 $1.08 spot",
            "gcp us-central1 a2-highgpu-1g $1.44 spot",
            "aws us-east-1 trn1.32xlarge $2.88 spot",
            "aws us-east-1 p4d.24xlarge $5.09 spot",
            "aws us-east-2 p5e.48xlarge $14.47 spot",
            "gcp us-east4 a3-highgpu-8g $15.81 spot",
            "aws us-east-1 p5.48xlarge $20.99 spot",
        ],
        id="spot",
    ),
    pytest.param(
        {},
        {"max_price": 2},
        [
            "gcp us-central1 e2-standard-2 $0.06701",
            "gcp europe-west4 e2-standard-2 $0.07377",
            "aws us-east-1 t3.large $0.0832",
            "aws us-west-2 t3.large $0.0832",
            "aws us-east-1 m6i.large $0.096",
            "aws us-west-2 m6i.large $0.096",
            "aws eu-west-1 m6i.large $0.107",
            "gcp us-central1 e2-standard-4 $0.134",
            "gcp us-east4 e2-standard-4 $0.1509",
            "azure eastus Standard_F4s_v2 $0.169",
            "azure westus2 Standard_F4s_v2 $0.169",
            "aws us-east-1 c5.xlarge $0.17",
            "aws us-west-2 c5.xlarge $0.17",
            "aws eu-west-1 c5.xlarge $0.192",
            "aws us-east-1 m5.xlarge $0.192",
            "aws us-east-1 m6i.xlarge $0.192",
            "aws us-west-2 m5.xlarge $0.192",
            "aws us-west-2 m6i.xlarge $0.192",
            "gcp us-central1 n2-standard-4 $0.1942",
            "gcp europe-west4 n2-standard-4 $0.2138",
            "aws eu-west-1 m5.xlarge $0.214",
            "aws eu-west-1 m6i.xlarge $0.214",
            "gcp us-central1 e2-standard-8 $0.2681",
            "gcp europe-west4 e2-standard-8 $0.2951",
            "azure eastus Standard_F8s_v2 $0.338",
            "azure westus2 Standard_F8s_v2 $0.338",
            "aws us-east-1 c5.2xlarge $0.34",
            "aws us-west-2 c5.2xlarge $0.34",
            "aws eu-west-1 c5.2xlarge $0.384",
            "gcp us-central1 n2-standard-8 $0.3885",
            "gcp europe-west4 n2-standard-8 $0.4277",
            "aws us-east-1 g4dn.xlarge $0.526",
            "aws us-west-2 g4dn.xlarge $0.526",
            "azure eastus Standard_NC4as_T4_v3 $0.526",
            "azure westus2 Standard_NC4as_T4_v3 $0.526",
            "aws eu-west-1 g4dn.xlarge $0.587",
            "azure eastus Standard_F16s_v2 $0.677",
            "azure westus2 Standard_F16s_v2 $0.677",
            "gcp us-east4 g2-standard-4 $0.7045",
            "gcp us-central1 g2-standard-4 $0.7068",
            "gcp us-central1 n1-standard-8 $0.73",
            "gcp europe-west4 n1-standard-8 $0.7858",
            "aws us-east-1 g6.xlarge $0.8048",
            "aws us-west-2 g6.xlarge $0.8048",
            "aws us-east-1 g5.xlarge $1.01",
            "aws us-west-2 g5.xlarge $1.01",
            "aws eu-west-1 g5.xlarge $1.12",
            "gcp us-central1 v5litepod-1 $1.20",
            "aws us-east-1 trn1.2xlarge $1.34",
            "gcp europe-west4 v5litepod-1 $1.56",
            "gcp us-east4 g2-standard-24 $1.99",
        ],
        id="max-price-2",
    ),
    pytest.param(
        {},
        {"regions": ("eu-west-1",)},
        [
            "aws eu-west-1 m6i.large $0.107",
            "aws eu-west-1 c5.xlarge $0.192",
            "aws eu-west-1 m5.xlarge $0.214",
            "aws eu-west-1 m6i.xlarge $0.214",
            "aws eu-west-1 c5.2xlarge $0.384",
            "aws eu-west-1 g4dn.xlarge $0.587",
            "aws eu-west-1 g5.xlarge $1.12",
            "aws eu-west-1 p4d.24xlarge $35.40",
        ],
        id="region-eu-west-1",
    ),
    pytest.param(
        {},
        {"instance_types": ("p5.48xlarge",)},
        [
            "aws us-east-1 p5.48xlarge $98.32",
            "aws us-west-2 p5.48xlarge $98.32",
        ],
        id="instance-type-p5",
    ),
    pytest.param(
        {"gpu": "tpu"},
        {"spot_policy": "auto", "max_price": 5},
        [
            "gcp us-central1 v5litepod-1 $0.213 spot",
            "gcp us-east5 v6e-1 $1.08 spot",
            "gcp us-central1 v5litepod-1 $1.20",
            "gcp europe-west4 v5litepod-1 $1.56",
            "gcp us-east5 v6e-1 $2.70",
            "gcp europe-west4 v6e-1 $2.97",
            "gcp us-central1 v2-8 $4.50",
            "gcp us-central1 v5litepod-4 $4.80",
        ],
        id="tpu-auto-under-5",
    ),
    pytest.param(
        {"gpu": "H100:8"},
        {"spot_policy": "auto"},
        [
            "gcp us-east4 a3-highgpu-8g $15.81 spot",
            "aws us-east-1 p5.48xlarge $20.99 spot",
            "gcp us-east4 a3-highgpu-8g $87.83",
            "aws us-east-1 p5.48xlarge $98.32",
            "aws us-west-2 p5.48xlarge $98.32",
            "azure eastus Standard_ND96isr_H100_v5 $98.32",
            "gcp europe-west4 a3-highgpu-8g $111.82",
        ],
        id="h100-8-auto",
    ),
    pytest.param(
        {"gpu": {"compute_capability": "9.0", "count": "1.."}},
        {},
        [
            "aws us-east-1 p5en.48xlarge $84.80",
            "aws us-west-2 p5en.48xlarge $84.80",
            "gcp us-east4 a3-highgpu-8g $87.83",
            "aws us-east-1 p5.48xlarge $98.32",
            "aws us-west-2 p5.48xlarge $98.32",
            "azure eastus Standard_ND96isr_H100_v5 $98.32",
            "gcp europe-west4 a3-highgpu-8g $111.82",
        ],
        id="compute-capability-9",
    ),
    pytest.param(
        {"gpu": {"total_memory": "1000GB.."}},
        {},
        [
            "aws us-east-1 p5en.48xlarge $84.80",
            "aws us-west-2 p5en.48xlarge $84.80",
        ],
        id="total-memory-1000",
    ),
    pytest.param(
        {"gpu": "A100"},
        {"backends": ("azure",)},
        [
            "azure eastus Standard_NC24ads_A100_v4 $3.67",
            "azure eastus Standard_NC48ads_A100_v4 $7.35",
            "azure westus2 Standard_NC48ads_A100_v4 $7.35",
            "azure eastus Standard_NC96ads_A100_v4 $14.69",
            "azure eastus Standard_ND96asr_v4 $27.20",
            "azure westus2 Standard_ND96asr_v4 $27.20",
            "azure eastus Standard_ND96amsr_A100_v4 $32.77",
        ],
        id="a100-on-azure",
    ),
    pytest.param(
        {"gpu": "L4"},
        {"availability_zones": ("us-central1-a",)},
        [
            "gcp us-central1 g2-standard-4 $0.7068",
            "gcp us-central1 g2-standard-24 $2.00",
            "gcp us-central1 g2-standard-96 $8.00",
        ],
        id="l4-in-zone",
    ),
    pytest.param(
        {"gpu": "T4:4"},
        {"spot_policy": "auto"},
        [
            "aws us-east-1 g4dn.12xlarge $3.91",
            "azure eastus Standard_NC64as_T4_v3 $4.35",
        ],
        id="t4-4-auto",
    ),
    pytest.param(
        {"cpu": "8..16", "memory": "30GB..64GB"},
        {},
        [
            "gcp us-central1 e2-standard-8 $0.2681",
            "gcp europe-west4 e2-standard-8 $0.2951",
            "gcp us-central1 n2-standard-8 $0.3885",
            "gcp europe-west4 n2-standard-8 $0.4277",
            "azure eastus Standard_F16s_v2 $0.677",
            "azure westus2 Standard_F16s_v2 $0.677",
            "gcp us-central1 n1-standard-8 $0.73",
            "gcp europe-west4 n1-standard-8 $0.7858",
            "aws us-east-1 trn1.2xlarge $1.34",
            "gcp us-central1 n1-standard-8 $2.86",
            "aws us-east-1 p3.2xlarge $3.06",
            "aws us-west-2 p3.2xlarge $3.06",
        ],
        id="cpu-8-16-mem-30-64",
    ),
    pytest.param(
        {"gpu": 0},
        {"backends": ("aws",)},
        [
            "aws us-east-1 t3.large $0.0832",
            "aws us-west-2 t3.large $0.0832",
            "aws us-east-1 m6i.large $0.096",
            "aws us-west-2 m6i.large $0.096",
            "aws eu-west-1 m6i.large $0.107",
            "aws us-east-1 c5.xlarge $0.17",
            "aws us-west-2 c5.xlarge $0.17",
            "aws eu-west-1 c5.xlarge $0.192",
            "aws us-east-1 m5.xlarge $0.192",
            "aws us-east-1 m6i.xlarge $0.192",
            "aws us-west-2 m5.xlarge $0.192",
            "aws us-west-2 m6i.xlarge $0.192",
            "aws eu-west-1 m5.xlarge $0.214",
            "aws eu-west-1 m6i.xlarge $0.214",
            "aws us-east-1 c5.2xlarge $0.34",
            "aws us-west-2 c5.2xlarge $0.34",
            "aws eu-west-1 c5.2xlarge $0.384",
            # Trainium is no GPU to gpuhunt (see data/SOURCES.md), so `gpu: 0` keeps it.
            "aws us-east-1 trn1.2xlarge $1.34",
            "aws us-east-1 trn1.32xlarge $21.50",
            "aws us-west-2 trn1.32xlarge $21.50",
        ],
        id="cpu-only-aws",
    ),
    pytest.param(
        {"gpu": 0},
        {"backends": ("gcp",)},
        [
            "gcp us-central1 e2-standard-2 $0.06701",
            "gcp europe-west4 e2-standard-2 $0.07377",
            "gcp us-central1 e2-standard-4 $0.134",
            "gcp us-east4 e2-standard-4 $0.1509",
            "gcp us-central1 n2-standard-4 $0.1942",
            "gcp europe-west4 n2-standard-4 $0.2138",
            "gcp us-central1 e2-standard-8 $0.2681",
            "gcp europe-west4 e2-standard-8 $0.2951",
            "gcp us-central1 n2-standard-8 $0.3885",
            "gcp europe-west4 n2-standard-8 $0.4277",
        ],
        id="cpu-only-gcp",
    ),
    pytest.param(
        {"gpu": 0},
        {"backends": ("azure",)},
        [
            "azure eastus Standard_F4s_v2 $0.169",
            "azure westus2 Standard_F4s_v2 $0.169",
            "azure eastus Standard_F8s_v2 $0.338",
            "azure westus2 Standard_F8s_v2 $0.338",
            "azure eastus Standard_F16s_v2 $0.677",
            "azure westus2 Standard_F16s_v2 $0.677",
        ],
        id="cpu-only-azure",
    ),
    pytest.param(
        {"gpu": "24GB..40GB:2"},
        {},
        [
            "gcp us-east4 g2-standard-24 $1.99",
            "gcp us-central1 g2-standard-24 $2.00",
            "azure eastus Standard_NV72ads_A10_v5 $6.52",
            "azure westus2 Standard_NV72ads_A10_v5 $6.52",
            "gcp us-central1 a2-highgpu-2g $7.35",
            "gcp us-east1 a2-highgpu-2g $7.35",
        ],
        id="gpu-24-40gb-2",
    ),
    pytest.param(
        {"gpu": "v5litepod-16"},
        {},
        [
            "gcp us-central1 v5litepod-16 $19.20",
            "gcp europe-west4 v5litepod-16 $24.96",
        ],
        id="v5litepod-16",
    ),
    pytest.param(
        {"gpu": "tpu"},
        {"nodes": 2},
        [
            "gcp us-central2 v4-16 $25.76",
            "gcp us-east5 v5p-16 $33.60",
            "gcp europe-west4 v5p-16 $34.02",
        ],
        id="tpu-2-nodes",
    ),
    pytest.param(
        {"gpu": "tpu"},
        {"nodes": 4},
        [
            "gcp us-central1 v5litepod-16 $19.20",
            "gcp europe-west4 v5litepod-16 $24.96",
            "gcp us-east5 v6e-16 $43.20",
            "gcp europe-west4 v6e-16 $47.52",
        ],
        id="tpu-4-nodes",
    ),
]


@pytest.mark.parametrize(("resources", "policy", "expected"), PINNED)
def test_offer_set_is_pinned(
    catalog: Catalog, resources: dict[str, Any], policy: dict[str, Any], expected: list[str]
) -> None:
    query = find_offers(requirements(resources, **policy), backends=CLOUDS, catalog=catalog)

    assert rows(query.offers) == expected
    assert query.total == len(expected)
    assert query.catalog.kind == "packaged"


@pytest.mark.parametrize(
    ("resources", "policy", "message"),
    [
        pytest.param(
            {"gpu": "A10G:2"},
            {},
            "no offer fits: `resources.gpu.count: 2` removed the last 5 offers "
            "(the cheapest was aws g5.xlarge at $1.01/h)",
            id="a10g-2",
        ),
        pytest.param(
            {"gpu": "A100:80GB:8"},
            {"max_price": 30},
            "`max_price: 30` removed the last 4 offers "
            "(the cheapest was azure Standard_ND96amsr_A100_v4 at $32.77/h)",
            id="max-price",
        ),
        pytest.param(
            {"cpu": "arm:4.."},
            {},
            "`resources.cpu.arch: arm` removed the last 115 offers",
            id="arm",
        ),
        pytest.param(
            {"gpu": "amd:MI300X:8"},
            {},
            "`resources.gpu.vendor: amd` removed the last 115 offers",
            id="amd",
        ),
        pytest.param(
            {"gpu": "H100"},
            {"regions": ["eu-west-1"]},
            "`resources.gpu.name: H100` removed the last 8 offers "
            "(the cheapest was aws m6i.large at $0.107/h)",
            id="name-after-region",
        ),
        pytest.param(
            {},
            {"instance_types": ["p5.48xlarge"], "spot_policy": "spot", "max_price": 20},
            "`max_price: 20` removed the last 1 offer "
            "(the cheapest was aws p5.48xlarge at $20.99/h)",
            id="one-offer",
        ),
        pytest.param(
            {},
            {"availability_zones": ["eu-north-1a"]},
            "`availability_zones: eu-north-1a` removed the last 138 offers",
            id="zone",
        ),
        pytest.param(
            {"gpu": "v5litepod-16"},
            {"nodes": 2},
            "no offer fits `nodes: 2`: a TPU slice is one TPU VM whose hosts are the nodes, "
            "and the cheapest (gcp v5litepod-16 at $19.20/h) has 4 hosts; set `nodes: 4`",
            id="nodes-not-the-named-slices-hosts",
        ),
        pytest.param(
            {"gpu": "v5litepod-8"},
            {"nodes": 2},
            "the cheapest (gcp v5litepod-8 at $9.60/h) has 1 host; set `nodes: 1` or pick "
            "a slice of 2 hosts",
            id="nodes-of-a-single-host-slice",
        ),
        pytest.param(
            {"gpu": "tpu"},
            {"nodes": 3},
            "no offer fits `nodes: 3`: a TPU slice is one TPU VM",
            id="no-slice-of-3-hosts",
        ),
    ],
)
def test_no_match_names_the_requirement_that_removed_the_last_offers(
    catalog: Catalog, resources: dict[str, Any], policy: dict[str, Any], message: str
) -> None:
    wanted = requirements(
        resources, **{k: tuple(v) if isinstance(v, list) else v for k, v in policy.items()}
    )

    with pytest.raises(OffersError) as caught:
        find_offers(wanted, backends=CLOUDS, catalog=catalog)

    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_cloud_offers_on_unconfigured_backends_are_named_when_only_local_is_in_use(
    catalog: Catalog,
) -> None:
    with pytest.raises(
        OffersError, match="backends in use \\(local\\); 19 offers on aws, azure, gcp would"
    ) as caught:
        find_offers(
            requirements({"gpu": "A100"}), backends=["local"], catalog=catalog, local_offer=MACHINE
        )

    assert "`dstack offer --backend azure`" in str(caught.value)


def test_the_settings_file_named_is_the_real_one(
    catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKSTACK_HOME", str(tmp_path / "state"))

    with pytest.raises(OffersError) as caught:
        find_offers(
            requirements({"gpu": "A100"}), backends=["local"], catalog=catalog, local_offer=MACHINE
        )

    assert f"configure one in {tmp_path / 'state' / 'config.yml'}," in str(caught.value)
    assert "~/.taskstack" not in str(caught.value)


@pytest.mark.parametrize(
    ("gpu", "message"),
    [
        ("H900", "unknown GPU name `H900` in `resources.gpu.name`; did you mean `H200` or"),
        ("H900:8", "unknown GPU name `H900`"),
        ("zzzz", "unknown GPU name `zzzz` in `resources.gpu.name`; `dstack offer` lists"),
        ("H900,Z7", "unknown GPU names `H900`, `Z7` in"),
    ],
)
def test_an_unknown_gpu_name_is_named(catalog: Catalog, gpu: str, message: str) -> None:
    with pytest.raises(OffersError) as caught:
        find_offers(requirements({"gpu": gpu}), backends=CLOUDS, catalog=catalog)

    assert str(caught.value).startswith(message), caught.value
    assert "removed the last" not in str(caught.value)


@pytest.mark.parametrize("gpu", ["MI300X:8", "B200:16", "v5litepod-999", "tpu-v5litepod-1024"])
def test_known_gpus_missing_from_the_catalog_still_name_the_filter(
    catalog: Catalog, gpu: str
) -> None:
    with pytest.raises(OffersError, match="removed the last"):
        find_offers(requirements({"gpu": gpu}), backends=CLOUDS, catalog=catalog)


MACHINE = Offer(
    backend="local",
    region="local",
    instance_type="workstation",
    price=0.0,
    spot=False,
    cpu=16,
    cpu_arch="x86",
    memory_gb=64.0,
    disk_gb=500,
    disk_fixed=True,
)


def test_local_offer_comes_first_and_keeps_its_own_disk(catalog: Catalog) -> None:
    query = find_offers(
        requirements({"disk": "200GB.."}, spot_policy="auto"),
        backends=["local", "aws"],
        catalog=catalog,
        local_offer=MACHINE,
    )

    assert query.offers[0] == MACHINE
    assert {o.backend for o in query.offers} == {"local", "aws"}
    assert all(o.disk_gb == 200 for o in query.offers[1:])


@pytest.mark.parametrize(
    ("resources", "policy", "why"),
    [
        ({"disk": "600GB.."}, {}, "resources.disk"),
        ({"gpu": 1}, {}, "resources.gpu.count"),
        ({"cpu": "32.."}, {}, "resources.cpu"),
        ({}, {"spot_policy": "spot"}, "spot_policy"),
        ({}, {"regions": ("us-east-1",)}, "regions"),
    ],
)
def test_local_offer_is_matched_like_any_other(
    resources: dict[str, Any], policy: dict[str, Any], why: str
) -> None:
    empty = Catalog(offers=(), source=load_packaged().source)

    with pytest.raises(OffersError, match=f"`{why}"):
        find_offers(
            requirements(resources, **policy),
            backends=["local"],
            catalog=empty,
            local_offer=MACHINE,
        )


def test_any_backend_marks_offers_of_backends_not_in_use(catalog: Catalog) -> None:
    query = find_offers(
        requirements({"gpu": "T4:4"}), backends=["aws"], catalog=catalog, any_backend=True
    )

    assert [(o.backend, o.configured) for o in query.offers] == [
        ("aws", True),
        ("azure", False),
    ]


def test_fitted_offer_carries_disk_minimum_efa_zones_and_tpu(catalog: Catalog) -> None:
    p4d = find_offers(
        requirements({"gpu": "A100:40GB:8", "disk": "500GB..1TB"}, regions=("us-east-1",)),
        backends=CLOUDS,
        catalog=catalog,
    ).offers[0]
    tpu = find_offers(
        requirements({"gpu": "tpu:v5litepod-8"}, availability_zones=("europe-west4-b",)),
        backends=CLOUDS,
        catalog=catalog,
    ).offers[0]
    zoned = find_offers(
        requirements({"gpu": "H100:8"}, availability_zones=("us-east-1c", "us-west-2a")),
        backends=CLOUDS,
        catalog=catalog,
    ).offers

    assert (p4d.instance_type, p4d.disk_gb, p4d.efa_interfaces) == ("p4d.24xlarge", 500, 4)
    assert format_resources(p4d) == "96xCPU, 1152GB, 8xA100 (40GB), 500GB"
    assert (tpu.region, tpu.zones) == ("europe-west4", ("europe-west4-b",))
    assert (tpu.tpu.name, tpu.tpu.generation, tpu.tpu.chips) == ("v5litepod-8", "v5e", 8)
    assert [(o.region, o.zones) for o in zoned] == [
        ("us-east-1", ("us-east-1c",)),
        ("us-west-2", ("us-west-2a",)),
    ]


@pytest.mark.parametrize(
    ("cloud", "first"),
    [("aws", "t3.large"), ("gcp", "e2-standard-2"), ("azure", "Standard_F4s_v2")],
)
def test_a_task_without_gpu_gets_a_cpu_only_instance_first(
    catalog: Catalog, cloud: str, first: str
) -> None:
    query = find_offers(requirements({}, backends=(cloud,)), backends=CLOUDS, catalog=catalog)

    assert (query.offers[0].instance_type, query.offers[0].gpu_count) == (first, 0)
    # As in dstack, a task that does not rule GPUs out still fits GPU instances, after these.
    assert any(offer.gpu_count for offer in query.offers)


def test_multi_host_slices_only_fit_tasks_that_ask_for_them(catalog: Catalog) -> None:
    generic = find_offers(requirements({"gpu": "tpu"}), backends=CLOUDS, catalog=catalog)
    named = find_offers(
        requirements({"gpu": "v5litepod-8,v5litepod-16"}), backends=CLOUDS, catalog=catalog
    )

    assert generic.total > 0
    assert {tpu_hosts(offer) for offer in generic.offers} == {1}
    assert [(o.instance_type, tpu_hosts(o)) for o in named.offers] == [
        ("v5litepod-8", 1),
        ("v5litepod-8", 1),
        ("v5litepod-16", 4),
        ("v5litepod-16", 4),
    ]


def test_gpu_names_are_case_insensitive(catalog: Catalog) -> None:
    lower = find_offers(requirements({"gpu": "a10g"}), backends=CLOUDS, catalog=catalog)
    upper = find_offers(requirements({"gpu": "A10G"}), backends=CLOUDS, catalog=catalog)

    assert lower.offers == upper.offers
    assert rows(lower.offers)[0] == "aws us-east-1 g5.xlarge $1.01"


def test_equal_prices_keep_a_fixed_order_whatever_the_catalog_order(catalog: Catalog) -> None:
    shuffled = Catalog(offers=tuple(reversed(catalog.offers)), source=catalog.source)
    wanted = requirements({"gpu": "T4"})

    forward = find_offers(wanted, backends=CLOUDS, catalog=catalog)
    backward = find_offers(wanted, backends=CLOUDS, catalog=shuffled)

    assert forward.offers == backward.offers
    assert rows(forward.offers)[:4] == [
        "aws us-east-1 g4dn.xlarge $0.526",
        "aws us-west-2 g4dn.xlarge $0.526",
        "azure eastus Standard_NC4as_T4_v3 $0.526",
        "azure westus2 Standard_NC4as_T4_v3 $0.526",
    ]


def test_default_requirements_are_dstack_defaults() -> None:
    wanted = requirements({})

    assert (wanted.cpu.min, wanted.memory_gb.min, wanted.disk_gb.min) == (2, 8, 100)
    assert wanted.gpu_count.is_any()
    assert wanted.spot_policy == "on-demand"


@pytest.mark.parametrize(("resources", "policy", "expected"), PINNED)
def test_task_files_give_the_same_requirements(
    resources: dict[str, Any], policy: dict[str, Any], expected: list[str]
) -> None:
    fields = {
        key: list(value) if isinstance(value, tuple) else value for key, value in policy.items()
    }
    text = yaml.safe_dump({"type": "task", "commands": ["true"], "resources": resources, **fields})

    from_file = Requirements.from_task(parse_task(text))

    assert from_file == requirements(resources, **policy)


def test_full_featured_task_names_the_gpu_memory_that_removed_the_last_offer(
    catalog: Catalog,
) -> None:
    task = parse_task(
        "type: task\ncommands: [train]\nresources:\n  cpu: 16..\n  gpu: A100:80GB:2\n"
        "  disk: 500GB..\nspot_policy: auto\nmax_price: 12.5\nbackends: [aws, gcp]\n"
        "regions: [us-east-1, us-central1]\n"
    )

    with pytest.raises(OffersError) as caught:
        find_offers(task, backends=["aws", "gcp"], catalog=catalog)

    # Two A100s there are (a2-highgpu-2g), but of 40GB each.
    assert str(caught.value).startswith(
        "no offer fits: `resources.gpu.memory: 80GB` removed the last 1 offer "
        "(the cheapest was gcp a2-highgpu-2g at $7.35/h)"
    )


@pytest.mark.parametrize(
    ("disk", "volume"), [("100GB..", 100), ("1TB", 1024), ("..50GB", 50), ("..500GB", 100)]
)
def test_volume_is_the_disk_ranges_minimum(catalog: Catalog, disk: str, volume: int) -> None:
    query = find_offers(requirements({"disk": disk}), backends=CLOUDS, catalog=catalog)

    assert {offer.disk_gb for offer in query.offers} == {volume}


@pytest.mark.parametrize(
    ("disk", "backends"),
    [
        ("4095GB..", ["aws", "azure", "gcp"]),
        ("4096GB..", ["aws", "gcp"]),  # above Azure's largest OS disk
        ("16384GB..", ["aws", "gcp"]),
        ("16385GB..", ["gcp"]),  # above the largest EBS gp3 volume
        ("65536GB..", ["gcp"]),
    ],
)
def test_a_boot_volume_the_cloud_cannot_make_is_not_offered(
    catalog: Catalog, disk: str, backends: list[str]
) -> None:
    query = find_offers(requirements({"disk": disk}), backends=CLOUDS, catalog=catalog)

    assert sorted({offer.backend for offer in query.offers}) == backends


def test_a_disk_no_cloud_makes_is_named(catalog: Catalog) -> None:
    with pytest.raises(OffersError, match=r"^no offer fits: `resources.disk: 65537GB\.\.`"):
        find_offers(requirements({"disk": "65537GB.."}), backends=CLOUDS, catalog=catalog)


def test_a_long_requirement_is_cut_in_the_message(catalog: Catalog) -> None:
    wanted = requirements({}, regions=("r" * 10_000,))

    with pytest.raises(OffersError) as caught:
        find_offers(wanted, backends=CLOUDS, catalog=catalog)

    assert "`regions: rrr" in str(caught.value)
    assert len(str(caught.value)) < 300
