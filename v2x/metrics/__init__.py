"""Detection metrics: AP over rotated IoU and paired bootstrap intervals (tracking metrics live in
``v2x.tracking``).
"""
