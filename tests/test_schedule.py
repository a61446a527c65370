"""The step decay and the monitoring schedule of the official code."""

from bmtard.config.schema import MonitorConfig
from bmtard.methods.decays import decay_factor
from bmtard.training.schedule import should_monitor


def test_decay_after_each_milestone_epoch():
    m = [215, 260, 285]
    assert decay_factor(1, m, 0.1) == 1.0
    assert decay_factor(215, m, 0.1) == 1.0
    assert abs(decay_factor(216, m, 0.1) - 0.1) < 1e-12
    assert abs(decay_factor(260, m, 0.1) - 0.1) < 1e-12
    assert abs(decay_factor(261, m, 0.1) - 0.01) < 1e-12
    assert abs(decay_factor(300, m, 0.1) - 0.001) < 1e-12


def test_official_monitor_epochs():
    cfg = MonitorConfig(every=20, dense_from=215)
    epochs = [e for e in range(1, 301) if should_monitor(e, 300, cfg)]
    assert epochs[:4] == [1, 20, 40, 60]
    assert 200 in epochs and 210 not in epochs and 214 not in epochs
    assert epochs[epochs.index(215) :] == list(range(215, 301))


def test_last_epoch_is_always_monitored():
    assert should_monitor(76, 76, MonitorConfig(every=10, dense_from=10**6))


def test_ciard_cosine_exp_schedule_by_hand():
    """CIARD.py: 0.1 before epoch 150, then 0.1 (0.5 + 0.5 cos(pi (e-150)/150)) exp(-0.01
    (e-150)^2/150^2); the teacher's the same from 50 over 250 epochs."""
    import math

    from bmtard.config.schema import OptimConfig
    from bmtard.methods.decays import cosine_exp, lr_factor

    cfg = OptimConfig(epochs=300, schedule="cosine_exp")
    assert lr_factor(1, cfg) == lr_factor(149, cfg) == lr_factor(150, cfg) == 1.0
    for e in (151, 200, 225, 299, 300):
        t = (e - 150) / 150
        want = (0.5 + 0.5 * math.cos(math.pi * t)) * math.exp(-0.01 * t * t)
        assert abs(lr_factor(e, cfg) - want) < 1e-15
    assert lr_factor(300, cfg) == 0.0 or lr_factor(300, cfg) < 1e-16
    assert cosine_exp(50, 50, 300) == 1.0 and cosine_exp(49, 50, 300) == 1.0
    t = (175 - 50) / 250
    assert cosine_exp(175, 50, 300) == (0.5 + 0.5 * math.cos(math.pi * t)) * math.exp(-0.01 * t * t)
    # the step schedule is the step decay, as before
    m = [215, 260, 285]
    step = OptimConfig(epochs=300, milestones=m)
    assert [lr_factor(e, step) for e in range(1, 301)] == [
        decay_factor(e, m, 0.1) for e in range(1, 301)
    ]
