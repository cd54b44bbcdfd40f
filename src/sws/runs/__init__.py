"""Run folders: checkpoints, training states and the pipeline stages that read and write them."""
