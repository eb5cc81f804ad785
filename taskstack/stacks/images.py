"""Which machine image a node boots when the plan names none, per cloud (engine-neutral).

Both engines look the image up the same way: the Pulumi program with `aws.ec2.get_ami`, the
Terraform renderer with a `data "aws_ami"` block.
"""

from __future__ import annotations

from taskstack.compiler.plan import ClusterPlan

# AWS publishes the Deep Learning Base AMIs (driver, Docker, NVIDIA container toolkit);
# Canonical's account publishes the plain Ubuntu images.
AWS_AMAZON_OWNER = "amazon"
AWS_CANONICAL_OWNER = "099720109477"
AWS_GPU_AMI = {
    "x86_64": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *",
    "arm64": "Deep Learning ARM64 Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *",
}
AWS_UBUNTU_AMI = {
    "x86_64": "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*",
    "arm64": "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-arm64-server-*",
}


def aws_image_lookup(plan: ClusterPlan) -> tuple[str, str]:
    """The AMI owner and name pattern for the plan's nodes (newest match wins)."""
    if plan.nvidia:
        return AWS_AMAZON_OWNER, AWS_GPU_AMI[plan.arch]
    return AWS_CANONICAL_OWNER, AWS_UBUNTU_AMI[plan.arch]
