"""What a model is worth: data splits, inference, pycocotools mAP, BatchNorm calibration, search scores."""
