"""The .sws file format: Huffman codes, sparse layers, the container and its statistics.

Knows nothing of training, run folders or data sets (docs/FORMAT.md)."""
