"""The streaming random-noise campaign.

``noise``: what noise, at which levels, and the one function that makes draw
keys; ``records``: the result shards on disk; ``run``: the campaign itself
(plan, produce, consume; resumable); ``ray``: its scale-out over Ray actors.
Import from the modules: this package's ``__init__`` stays empty so that the
report and the gate can read records and noise specs without loading engines.
"""
