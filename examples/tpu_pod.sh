#!/bin/bash
# U-GAT-IT on a Cloud TPU pod slice (e.g. v5litepod-16: 4 hosts x 4 chips): the same command on every host.
#
#   bash examples/tpu_pod.sh my-tpu us-west4-a
#
# JAX finds the pod's hosts itself (UGATIT_DISTRIBUTED=auto calls jax.distributed.initialize() with no
# arguments). Every host needs the repository, its virtual environment (with jax[tpu]) and the dataset at the
# same paths, and --workdir must be a folder all hosts share (e.g. a Filestore NFS mount): the trainer writes
# checkpoints, TensorBoard logs and samples with ordinary file operations, not to gs:// URLs.
# The global batch (--config.batch_size) is split over all 16 chips, so it must divide by 16; each host reads
# its own quarter of the training images.
set -euo pipefail
TPU_NAME=${1:?TPU name}
ZONE=${2:?zone}

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command='
  cd ~/ugatit-jax && source .venv/bin/activate &&
  UGATIT_DISTRIBUTED=auto UGATIT_INIT_TIMEOUT=600 python train.py \
    --config configs/default.py \
    --config.dataset_dir=$HOME/data/selfie2anime \
    --config.batch_size=16 \
    --workdir /mnt/shared/runs/selfie2anime_pod16'
