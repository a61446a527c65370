"""The model card's page (bmtard/experiments/pages.py): what it shows, and that its cost, the one
part that differs between two runs of the same settings, is a section of its own."""

from bmtard.experiments.pages import card_page

from pipeline_helpers import timeless

CARD = {
    "checkpoint": "models/student.pt",
    "architecture": "resnet18",
    "width": 1.0,
    "dataset": "cifar10",
    "clean_acc": 21.0,
    "training": {"method": "bmtard", "epoch": 2},
}


def _cost(seconds: float) -> dict:
    stage = {"device": "cpu", "seconds": seconds, "images_per_second": 50.0, "starts": 1}
    return {"training": stage, "teachers": {"clean": stage}, "evaluation": stage}


def test_card_page_shows_the_headline_and_what_each_stage_cost():
    page = card_page({**CARD, "cost": _cost(120.0)})
    assert "<h2>models/student.pt</h2>" in page and "resnet18 ×1.0" in page
    section = page[page.index('<section class="cost">') : page.index("</section>")]
    for stage in ("student&#x27;s training", "clean teacher", "evaluation"):
        assert stage in section, stage
    assert "What it cost" not in page.replace(section, "")


def test_two_cards_alike_but_for_their_cost_give_the_same_page_without_it():
    first, second = (card_page({**CARD, "cost": _cost(s)}) for s in (120.0, 480.0))
    assert first != second
    assert timeless("card.html", first.encode()) == timeless("card.html", second.encode())
    other = card_page({**CARD, "clean_acc": 22.0, "cost": _cost(120.0)})
    assert timeless("card.html", other.encode()) != timeless("card.html", first.encode())
