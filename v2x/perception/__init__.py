"""From points to BEV features and boxes: the agent's encoder, the ego's fusion, alignment and
detection head, and compensation of late messages.
"""
