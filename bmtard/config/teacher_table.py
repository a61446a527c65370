"""The published teachers that adversarial-distillation papers learn from, declared once.

Every reader derives from ``TEACHERS``: the allowed values of ``clean_teacher.published`` and
``robust_teacher.published`` (``bmtard.config.params``), the architecture a name sets, where the
teacher stage expects its file (``default_path``) and what it says when the file is missing, the
layouts the import accepts, the published accuracies the stage checks the imported teacher
against, ``python -m bmtard teachers`` and ``docs/teachers.md``. Plain data, no torch: the
configuration imports it.

A name is the teacher's RobustBench name where it has one (``Chen2021LTD_WRN34_20``); the same
name may exist on two datasets (``Chen2021LTD_WRN34_10`` on CIFAR-10 and CIFAR-100: different
files and architectures), and ``data.dataset`` picks the entry. Accuracies are in %, on the full
test set, L-inf eps 8/255 unless ``note`` says otherwise. The files themselves are not in this
repository (tens of MB to 1 GB each); each one's ``source`` says where to get it.
"""

from __future__ import annotations

from dataclasses import dataclass

from bmtard.core.errors import ParamsError

#: how a published file may hold its weights, as the import reads it
#: (``bmtard.models.checkpoint.extract_state_dict``): the state_dict itself; under a
#: "state_dict" key (with other entries beside it, such as an epoch or an optimizer); with the
#: "module." prefix DataParallel gives every key; both
LAYOUTS = {
    "plain": "the state_dict itself",
    "nested": "a dict with the state_dict under 'state_dict'",
    "module": "the state_dict with 'module.' before every key (saved from DataParallel)",
    "nested+module": "under 'state_dict', with 'module.' before every key",
}
#: a file not seen here: any layout the import reads
ANY_LAYOUT = tuple(LAYOUTS)
#: where the teacher stage looks for a published teacher's file when ``checkpoint`` is null,
#: from the project folder: ``teachers/<dataset>/<name>.pt``
FOLDER = "teachers"
ROBUSTBENCH = "RobustBench leaderboard (model_info/<dataset>/Linf/<name>.json)"
ROBUSTBENCH_FILE = (
    "RobustBench's file; robustbench.utils.load_model(model_name='{name}', dataset='{dataset}', "
    "threat_model='Linf') saves it as models/{dataset}/Linf/{name}.pt"
)


@dataclass(frozen=True)
class PublishedTeacher:
    """One published teacher.

    kind: "robust" (adversarially trained) or "standard" (clean training). arch: the
    ``bmtard.models`` architecture that holds its weights key for key (at width 1.0).
    normalizes: the dataset whose mean and std it normalizes its input with inside the model
    (None: it takes [0, 1] images as they are). layouts: how its file holds the weights
    (``LAYOUTS``). clean, autoattack: its published accuracies (%; None where none is
    published), from ``reported_by``. used_by: the papers that distil from it (with how sure
    that is). sha256: of the published file, where it was at hand.
    """

    name: str
    dataset: str
    label: str  # how tables name it
    kind: str
    arch: str
    normalizes: str | None
    layouts: tuple[str, ...]
    source: str  # the address a person downloads the file from
    clean: float | None
    autoattack: float | None
    reported_by: str
    used_by: tuple[str, ...]
    sha256: str | None = None
    note: str = ""


def _gdrive(file_id: str) -> str:
    return f"https://drive.google.com/uc?id={file_id}"


def _rb(name: str, dataset: str, file_id: str) -> str:
    return f"{_gdrive(file_id)} ({ROBUSTBENCH_FILE.format(name=name, dataset=dataset)})"


TEACHERS = (
    # ----------------------------------------------------------------------------- CIFAR-10
    PublishedTeacher(
        "Zhang2019Theoretically", "cifar10", "TRADES WRN-34-10", "robust", "wrn34_10", None,
        ("plain",),
        _gdrive("10sHvaXhTNZGz618QmD5gSOAjO3rMzV33") + " (model_cifar_wrn.pt, the link in "
        "TRADES' and MTARD's READMEs; RobustBench's copy: " + _gdrive(
            "1hPz9QQwyM7QSuWu-ANG_uXR-29xtL8t_") + ")",
        84.92, 53.08, ROBUSTBENCH,
        ("RSLAD", "MTARD", "B-MTARD", "CIARD (model_cifar_wrn.pt by file name)"),
        note="TRADES saves model.state_dict() and RSLAD loads it with load_state_dict; "
        "RobustBench evaluates it at eps 0.031 (7.9/255)",
    ),
    PublishedTeacher(
        "Chen2021LTD_WRN34_10", "cifar10", "LTD WRN-34-10", "robust", "wrn34_10_nosub", None,
        ("module", "nested+module"),
        _rb("Chen2021LTD_WRN34_10", "cifar10", "1-0RoQKYvHLNh7hZ71wJjSit1XtrJQo9D"),
        85.21, 56.94, ROBUSTBENCH, (),
        note="no sub_block1 on CIFAR-10 (RobustBench: WideResNet(34, 10, sub_block1=False)); "
        "AdaAD's loader strips the module. prefix of the LTD files",
    ),
    PublishedTeacher(
        "Chen2021LTD_WRN34_20", "cifar10", "LTD WRN-34-20", "robust", "wrn34_20_nosub", None,
        ("module", "nested+module"),
        _rb("Chen2021LTD_WRN34_20", "cifar10", "1-5JmY9rapuGwCUc2nPvy7Rb_sn_dHhFm"),
        86.03, 57.71, ROBUSTBENCH,
        ("AdaAD (its code's CIFAR-10 teacher)", "DGAD (its code's alternative)",
         "IGDM (the CIFAR-10 table, by a second-hand reading)",
         "Why Robust Teachers Fail (ICML 2026, Table 2, second-hand)"),
        note="no sub_block1 (RobustBench: WideResNet(34, 20, sub_block1=False)); AdaAD's "
        "loader strips the module. prefix",
    ),
    PublishedTeacher(
        "Addepalli2021Towards_WRN34", "cifar10", "Addepalli WRN-34-10", "robust", "wrn34_10",
        None, ANY_LAYOUT,
        _rb("Addepalli2021Towards_WRN34", "cifar10", "1-3vgjTNfSq7LSMKuayEQ-jLflAP196dB"),
        85.32, 58.04, ROBUSTBENCH, (),
        note="the most robust WRN-34-10 of RobustBench trained on CIFAR-10 alone (no extra or "
        "generated data); with sub_block1 (WideResNet(34, 10, sub_block1=True))",
    ),
    PublishedTeacher(
        "Wang2023Better_WRN-28-10", "cifar10", "BDM WRN-28-10", "robust", "dm_wrn28_10_cifar10",
        "cifar10", ANY_LAYOUT,
        _rb("Wang2023Better_WRN-28-10", "cifar10", "1-6MYKJdECDVGaWjj6GgqvaT95BGKhUvI"),
        92.44, 67.31, ROBUSTBENCH, (),
        note="trained with 20M generated images; SiLU, CIFAR-10 normalization inside",
    ),
    PublishedTeacher(
        "Wang2023Better_WRN-70-16", "cifar10", "BDM WRN-70-16", "robust", "dm_wrn70_16_cifar10",
        "cifar10", ANY_LAYOUT,
        _rb("Wang2023Better_WRN-70-16", "cifar10", "1-RF7ZSS-PAh6bfQcuqx4lh9bc9BUGnap"),
        93.25, 70.69, ROBUSTBENCH, (),
        note="trained with 50M generated images; SiLU, CIFAR-10 normalization inside",
    ),
    PublishedTeacher(
        "Cui2023Decoupled_WRN-28-10", "cifar10", "DKL WRN-28-10", "robust", "dm_wrn28_10_cifar10",
        "cifar10", ANY_LAYOUT,
        _rb("Cui2023Decoupled_WRN-28-10", "cifar10", "1-AaTrYt23WJFR22hXgBd-i6kjpsz6Hf2"),
        92.16, 67.73, ROBUSTBENCH, (),
        note="trained with 20M generated images; SiLU, CIFAR-10 normalization inside",
    ),
    PublishedTeacher(
        "Gowal2021Improving_28_10_ddpm_100m", "cifar10", "Gowal WRN-28-10 (DDPM)", "robust",
        "dm_wrn28_10_cifar10", "cifar10", ANY_LAYOUT,
        _rb("Gowal2021Improving_28_10_ddpm_100m", "cifar10", "12L8YE6VBgUDKyW6GMSNefSYj2gg4LEKx"),
        87.50, 63.44, ROBUSTBENCH,
        ("SAAD (TMLR 2026: 'Gowal WRN-28-10', second-hand)",),
        note="trained with 100M generated images; Swish, CIFAR-10 normalization inside",
    ),
    PublishedTeacher(
        "Gowal2021Improving_70_16_ddpm_100m", "cifar10", "Gowal WRN-70-16 (DDPM)", "robust",
        "dm_wrn70_16_cifar10", "cifar10", ANY_LAYOUT,
        _rb("Gowal2021Improving_70_16_ddpm_100m", "cifar10", "10qBoDG_NomJBrRFeTsSwEcJF1GA-sjC4"),
        88.74, 66.11, ROBUSTBENCH, (),
        note="trained with 100M generated images; Swish, CIFAR-10 normalization inside",
    ),
    PublishedTeacher(
        "Gowal2020Uncovering_70_16_extra", "cifar10", "Gowal WRN-70-16 (extra data)", "robust",
        "dm_wrn70_16_cifar10", "cifar10", ANY_LAYOUT,
        _rb("Gowal2020Uncovering_70_16_extra", "cifar10", "1GxryYj_Or-VCDca0wgiFLz4ssXSZXQoJ"),
        91.10, 65.88, ROBUSTBENCH, (),
        note="trained with 500K extra (80M-TinyImages) images; Swish, CIFAR-10 normalization "
        "inside",
    ),
    PublishedTeacher(
        "MTARD_ResNet56", "cifar10", "MTARD ResNet-56", "standard", "resnet56", None,
        ("plain", "module"),
        "https://drive.google.com/file/d/1i9PdN-Nt10Ckhaj3KqFrEE9SICSIEYCe/view (the clean "
        "teacher link of the MTARD README, zhaoshiji123/MTARD)",
        93.18, None, "inferred from the file name its code loads (..._9318.pth); not confirmed",
        ("MTARD", "B-MTARD", "CIARD (cifar10_resnet56, the same definition)"),
        note="the B-MTARD clean teacher; trained on [0, 1] images, no normalization; MTARD's "
        "cifar10_nat_teacher_models/resnet.py loads the file's dict with 'module.' removed",
    ),
    PublishedTeacher(
        "AutoAttack_ResNet18", "cifar10", "standard ResNet-18", "standard", "resnet18", None,
        ("plain",),
        "pyautoattack/examples/model_test.pt inside the pyautoattack==0.2.0 wheel (a dependency "
        "of this project: python -m bmtard teachers --get AutoAttack_ResNet18 copies it), also "
        "examples/model_test.pt of the reference AutoAttack repository (fra31/auto-attack)",
        None, None, "no published accuracy (the example model of the reference AutoAttack)",
        (),
        sha256="399f52da9f914c323fa5a6096d60f460a3449a59b64a6405200c1e629f8425a7",
        note="a standard-trained ResNet-18 (kuangliu keys, no normalization); measured here "
        "94.0 % clean on the 500 test images of presets/quick.yaml",
    ),
    # ----------------------------------------------------------------------------- CIFAR-100
    PublishedTeacher(
        "Chen2021LTD_WRN34_10", "cifar100", "LTD WRN-34-10", "robust", "wrn34_10", None,
        ("module", "nested+module"),
        _rb("Chen2021LTD_WRN34_10", "cifar100", "1-I4NZyULdEWH46b4EaCTxuuRo4eFXsg_"),
        64.07, 30.59, ROBUSTBENCH,
        ("AdaAD (its code's CIFAR-100 teacher)", "DGAD (its code's CIFAR-100 teacher)"),
        note="with sub_block1 on CIFAR-100 (RobustBench: WideResNet(34, 10, 100, "
        "sub_block1=True)); AdaAD's loader strips the module. prefix",
    ),
    PublishedTeacher(
        "Wang2023Better_WRN-28-10", "cifar100", "BDM WRN-28-10", "robust", "dm_wrn28_10_cifar100",
        "cifar100", ANY_LAYOUT,
        _rb("Wang2023Better_WRN-28-10", "cifar100", "1-jOu3wKWyw0XnBCXDGR32xn8Bw9GTJgh"),
        72.58, 38.83, ROBUSTBENCH,
        ("IGDM (cifar100.sh: 'BDM', the AdaAD and AdaAD+IGDM rows)",),
        note="trained with 50M generated images; SiLU, CIFAR-100 normalization inside",
    ),
    PublishedTeacher(
        "Wang2023Better_WRN-70-16", "cifar100", "BDM WRN-70-16", "robust", "wrn70_16", "cifar100",
        ANY_LAYOUT,
        _rb("Wang2023Better_WRN-70-16", "cifar100", "1-yYcT73GP13c0y9HrgtpyB3NAfkGKgjY"),
        75.22, 42.67, ROBUSTBENCH, (),
        note="trained with 50M generated images; SiLU, CIFAR-100 normalization inside",
    ),
    PublishedTeacher(
        "Cui2023Decoupled_WRN-28-10", "cifar100", "DKL WRN-28-10", "robust",
        "dm_wrn28_10_cifar100", "cifar100", ANY_LAYOUT,
        _rb("Cui2023Decoupled_WRN-28-10", "cifar100", "15BwWdWbNfoarTEWWugicOVkTjh3nXH36"),
        73.85, 39.18, ROBUSTBENCH, (),
        note="trained with 50M generated images; SiLU, CIFAR-100 normalization inside",
    ),
    PublishedTeacher(
        "Gowal2020Uncovering", "cifar100", "Gowal WRN-70-16", "robust", "wrn70_16", "cifar100",
        ANY_LAYOUT,
        _rb("Gowal2020Uncovering", "cifar100", "16I86x2Vv_HCRKROC86G4dQKgO3Po5mT3"),
        60.86, 30.03, ROBUSTBENCH,
        ("RSLAD (CIFAR-100, 'WRN-70-16 of Gowal et al.')", "MTARD (CIFAR-100)",
         "B-MTARD (CIFAR-100)"),
        note="CIFAR-100 data alone; Swish, CIFAR-100 normalization inside",
    ),
    PublishedTeacher(
        "Gowal2020Uncovering_extra", "cifar100", "Gowal WRN-70-16 (extra data)", "robust",
        "wrn70_16", "cifar100", ANY_LAYOUT,
        _rb("Gowal2020Uncovering_extra", "cifar100", "1LQBdwO2b391mg7VKcP6I0HIOpC6O83gn"),
        69.15, 36.88, ROBUSTBENCH, (),
        note="trained with 500K extra (80M-TinyImages) images; Swish, CIFAR-100 normalization "
        "inside",
    ),
)  # fmt: skip

NAMES = tuple(dict.fromkeys(t.name for t in TEACHERS))
BY_KEY = {(t.dataset, t.name): t for t in TEACHERS}
ARCHS = tuple(dict.fromkeys(t.arch for t in TEACHERS))


def teacher(name: str, dataset: str, key: str = "published") -> PublishedTeacher:
    """The published teacher ``name`` trained on ``dataset``; ParamsError naming ``key`` if the
    table has none."""
    try:
        return BY_KEY[(dataset, name)]
    except KeyError:
        there = ", ".join(t.name for t in TEACHERS if t.dataset == dataset) or "none"
        others = sorted(t.dataset for t in TEACHERS if t.name == name)
        hint = f" (it is a teacher of {', '.join(others)})" if others else ""
        raise ParamsError(
            f"{key} = {name!r}: not a published {dataset} teacher{hint}; those of {dataset} "
            f"are {there} (bmtard/config/teacher_table.py)"
        ) from None


def default_path(dataset: str, name: str) -> str:
    """Where the teacher stage expects the file of ``name`` when ``checkpoint`` is null (from
    the project folder)."""
    return f"{FOLDER}/{dataset}/{name}.pt"


def of_dataset(dataset: str) -> tuple[PublishedTeacher, ...]:
    """The published teachers trained on ``dataset``, in the table's order."""
    return tuple(t for t in TEACHERS if t.dataset == dataset)
