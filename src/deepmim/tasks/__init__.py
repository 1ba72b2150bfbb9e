"""Jobs the command line runs: pretrain (finetune, linprobe and segment follow)."""
