"""Image and audio caption choice: the run's own held-out grounding questions, as a multimodal suite."""

from typing import Any

from constellation_kit.errors import ConfigError
from constellation_kit.eval.task import EvalSuite, MediaRef, MultipleChoiceItem, Task, multiple_choice_chance


class CaptionChoiceSuite(EvalSuite):
    """Which caption belongs to this picture (or sound)? The multimodal data module's grounding questions.

    Each held-out media item with its own caption and ``caption_choices - 1`` other held-out
    captions (:meth:`~constellation_kit.data.MultimodalDataModule.grounding_dataloader` has the same
    questions): the context is the item's encoder tokens, each caption is scored after them. Chance
    is ``1 / caption_choices``. Unlike ``val/<modality>_caption_acc`` the caption's end-of-text is
    not scored (the harness's continuation semantics), and ``acc_norm`` is reported too.

    Args:
        modality: ``"image"`` or ``"audio"``.
        num_items: at most this many questions (``None``: all the data module made).
    """

    def __init__(self, modality: str = "image", num_items: int | None = None) -> None:
        if modality not in ("image", "audio"):
            raise ConfigError(f"CaptionChoiceSuite modality={modality!r} must be 'image' or 'audio'")
        self.modality, self.num_items = modality, num_items

    @property
    def name(self) -> str:
        return f"{self.modality}_caption"

    def build(self, datamodule: Any = None) -> Task:
        grounding = getattr(datamodule, "grounding", None)
        if not isinstance(grounding, dict):
            raise ConfigError(f"{self.name} needs a multimodal run (its data module makes the grounding questions)")
        if self.modality not in grounding:
            raise ConfigError(f"the run's data has no {self.modality} grounding questions (no held-out {self.modality} "
                              "items, or fewer distinct captions than caption_choices)")
        dataset = grounding[self.modality]
        tokenizer = datamodule.tokenizer
        items = []
        for choice in dataset.choices[:self.num_items]:
            captions = tuple(tokenizer.decode(ids) for ids in choice.candidates)
            media = MediaRef(self.modality, dataset.bank.items[choice.item].path)
            items.append(MultipleChoiceItem("", captions, choice.answer, delimiter="", media=media))
        return Task(self.name, items, multiple_choice_chance(items), f"held-out {self.modality} caption choice")
