# The tfos cluster-host image: an EC2 AMI built from Debian 12's official AMI by
# ami/provision.sh (the same script tests/ami runs in a chroot). See ami/README.md.
#
#   ami/pack-source.sh /tmp/tfos-src.tar.gz
#   packer build -var region=eu-west-1 -var variant=cpu -var tfos_source=/tmp/tfos-src.tar.gz ami/tfos.pkr.hcl
#
# Written to what Debian 12's packer (1.6.6) validates; newer Packer releases keep the amazon
# builder in a plugin: `packer plugins install github.com/hashicorp/amazon` first.

variable "region" {
  type        = string
  description = "AWS region the image is built (and registered) in."
  default     = "us-east-1"
}

variable "variant" {
  type        = string
  description = "cpu, or gpu: NVIDIA's driver and TensorFlow's CUDA libraries as well."
  default     = "cpu"

  validation {
    condition     = contains(["cpu", "gpu"], var.variant)
    error_message = "The variant must be \"cpu\" or \"gpu\"."
  }
}

variable "instance_type" {
  type        = string
  description = "The builder instance (empty: c6i.large for cpu, g5.xlarge for gpu)."
  default     = ""
}

variable "tfos_source" {
  type        = string
  description = "tfos's source tarball, made by ami/pack-source.sh."
  default     = "/tmp/tfos-src.tar.gz"
}

variable "debian_owner" {
  type        = string
  description = "The AWS account that publishes Debian's official AMIs."
  default     = "136693071363"
}

variable "volume_size" {
  type        = number
  description = "Root volume of the image in GiB (0: 16 for cpu, 40 for gpu)."
  default     = 0
}

variable "subnet_id" {
  type        = string
  description = "Subnet for the builder instance (empty: the default VPC's)."
  default     = ""
}

locals {
  timestamp     = formatdate("YYYYMMDD-hhmm", timestamp())
  instance_type = var.instance_type != "" ? var.instance_type : (var.variant == "gpu" ? "g5.xlarge" : "c6i.large")
  volume_size   = var.volume_size > 0 ? var.volume_size : (var.variant == "gpu" ? 40 : 16)
}

source "amazon-ebs" "debian12" {
  region          = var.region
  instance_type   = local.instance_type
  subnet_id       = var.subnet_id
  ssh_username    = "admin"
  ami_name        = "tfos-${var.variant}-debian12-${local.timestamp}"
  ami_description = "tfos (TensorFlow on Apache Spark) cluster host, ${var.variant} variant, Debian 12"

  source_ami_filter {
    filters = {
      name                = "debian-12-amd64-*"
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = [var.debian_owner]
    most_recent = true
  }

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = local.volume_size
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }

  tags = {
    Name         = "tfos-${var.variant}"
    tfos-variant = var.variant
    source-ami   = "{{ .SourceAMIName }}"
  }
}

build {
  sources = ["source.amazon-ebs.debian12"]

  provisioner "shell" {
    inline = ["mkdir -p /tmp/tfos-ami"]
  }

  provisioner "file" {
    source      = "${path.root}/"
    destination = "/tmp/tfos-ami"
  }

  provisioner "file" {
    source      = var.tfos_source
    destination = "/tmp/tfos-src.tar.gz"
  }

  provisioner "shell" {
    environment_vars = [
      "TFOS_VARIANT=${var.variant}",
      "TFOS_SOURCE=/tmp/tfos-src.tar.gz",
      "TFOS_AMI_DIR=/tmp/tfos-ami",
    ]
    execute_command = "sudo env {{ .Vars }} bash '{{ .Path }}'"
    script          = "${path.root}/provision.sh"
  }

  provisioner "shell" {
    # The image must not carry the builder's identity: cloud-init starts afresh on each
    # instance, and the upload is removed.
    inline = [
      "sudo rm -rf /tmp/tfos-ami /tmp/tfos-src.tar.gz",
      "sudo cloud-init clean --logs",
    ]
  }
}
