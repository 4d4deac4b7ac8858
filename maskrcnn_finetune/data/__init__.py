"""Data stage: every dataset path into COCO json."""
