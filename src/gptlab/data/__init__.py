"""Datasets: tokenizers, prepare (text -> train.bin / val.bin / meta.json), the LightningDataModule,
packing and padding, token masking."""
