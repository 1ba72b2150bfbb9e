"""The jobs the command line runs: pretrain, finetune (+ evaluate), segment, linprobe, probe (knn,
probe-layers), analyze, export. base.py is the skeleton the training tasks share."""
