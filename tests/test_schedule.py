"""The step decay and the monitoring schedule of the official code."""

from bmtard.config.params import MonitorConfig
from bmtard.training.schedule import decay_factor, should_monitor


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
