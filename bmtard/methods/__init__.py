"""Training methods: how one batch becomes a loss. The loop (``bmtard.training.loop``) owns the
optimizer, schedule, epochs and logging; a method owns its attack, its loss and its own state.

Every method has
  ``batch_loss(model, x, y, rate_factor) -> (loss, logs)``: x (B, C, H, W) in [0, 1], y (B,);
      ``rate_factor`` is the schedule's decay in force (B-MTARD decays its balance rates with
      the lr);
      logs are per-batch detached 0-dim tensors, averaged over the epoch by the loop on the
      device;
  ``status() -> dict[str, float]``: state worth logging at the end of an epoch;
  ``state_dict() -> dict`` / ``load_state_dict(dict)``: the method's own state (plain data and
      tensors), saved with the training state so that a killed run resumes exactly
      (``bmtard.methods.stateless.Stateless`` for methods that keep none).

Import a method from its own module (``bmtard.methods.b_mtard``, ...), so that a stage depends
only on the code it runs.
"""
