"""Training methods: how one batch becomes a loss. The contract every method keeps, and the order in
which the loop calls it, is stated once in ``bmtard.methods.contract``; the student's methods are
one module each, registered by name (``bmtard.methods.registry``, the modules named in
``bmtard.config.method_table``); ``standard`` trains the clean teacher; ``igdm`` composes with the
splittable methods; ``losses``, ``balance``, ``decays`` and ``split`` are what they share;
``reference`` is the B-MTARD step as the official code structures it.
"""
