"""Shipped MetaSchedule tuning records, installed as ``edgecompile.records``.

One directory per target preset and CPU (``x86-znver5/``): MetaSchedule's JSON database, the
key of the target it was measured on, the models tuned into it. ``edgecompile tune`` writes
here (or to ``--records-dir`` / ``$EDGECOMPILE_TUNING_DIR``); ``edgecompile build`` reads here.
"""
