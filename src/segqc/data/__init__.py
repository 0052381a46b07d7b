"""Data: readers for the ISIC 2017 and generic folder layouts, the synthetic default, augmentation."""
