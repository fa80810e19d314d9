#!/usr/bin/env bash
# `dvc exp show` with only the columns that matter, best dev macro-F1 first:
#
#   scripts/exp_table.sh [DVC EXP SHOW OPTIONS]      e.g. --md, --csv, -A, --rev main
#
# Columns: the experiment; the params a sweep changes (model checkpoint and layers kept; distillation
# on, alpha, temperature, augmented copies; link and cashtag replacement, doubtful rows dropped; LoRA on/rank/alpha/dropout/
# target modules; learning rate, schedule, warm-up, epochs, batch size, processes, weight decay, loss
# options, seed; the teacher's checkpoint, runs, augmentation, LoRA on, learning rate, epochs and seed);
# dev macro-F1 and accuracy with the epoch they come from; the teacher's dev macro-F1; validation
# macro-F1 and accuracy (metrics/validation.json, shown as plain `macro_f1` and `accuracy`: reported,
# never used to choose), and on the labels the audit trusts (`trusted_labels`); the int8 export's
# smoothing and its dev fidelity to PyTorch.
# An experiment run up to `train` only shows the validation metrics of the commit it started from:
# ignore those columns for it.
# The train stage's and the teacher's columns carry their file's name where both files have keys of the
# same name (dvc exp show prefixes clashing names); of the teacher's, only dev macro-F1 is kept.
# Every Trainer field, data fingerprint and dependency hash is left out.
set -euo pipefail
cd "$(dirname "$0")/.."
columns='Experiment|Created|model\.(checkpoint|layers)|distill\.(enabled|alpha|temperature|augmented_copies)|tokenize\.((url|cashtag)_replacement|drop_doubtful)|lora\.(enabled|r|alpha|dropout|target_modules)|teacher\.(checkpoint|runs|augment\.(copies|method|rate)|lora\.enabled|train\.(learning_rate|epochs|seed))|train\.(learning_rate|epochs|batch_size|num_processes|class_weights|label_smoothing|focal_gamma|lr_scheduler_type|warmup_ratio|weight_decay|seed)|(metrics/train/metrics\.json:)?(dev\.(macro_f1|accuracy)|best_epoch)|metrics/teacher\.json:dev\.macro_f1|macro_f1|accuracy|trusted_labels\.(macro_f1|accuracy)|export\.smoothing_alpha|onnx_int8\.dev\.(agreement_with_pytorch|mean_abs_probability_difference)'
exec dvc exp show --no-pager --drop '.*' --keep "^($columns)\$" \
  --sort-by metrics/train/metrics.json:dev.macro_f1 --sort-order desc "$@"
