"""Caption vocabularies: SentencePiece models trained on a source's captions (MuLan's text tower).

The vocabulary is stored with the model, at MODEL_DIR/text_vocab/captions.model (+ .vocab), and
trained only when that file is missing: a resumed run keeps the ids its checkpoints were trained
with. Ids follow seqio's conventions (pad 0, eos 1, unk 2, no bos), so the file loads as a
`seqio.SentencePieceVocabulary` and a raw-audio task can tokenize captions with it
(`register_audio_task(..., text_vocabulary=path)` adds the `text_tokens` feature). From gin:

    mulan_task/register_audio_task.text_vocabulary = @caption_vocabulary()
    caption_vocabulary.model_dir = %MODEL_DIR
    caption_vocabulary.source = @mulan_task/SyntheticSource()

Training is deterministic: captions are sorted, nothing is sampled or shuffled, so the same
captions give the same model (and each host of a pod may train its own copy safely: the files
are written under temporary names and renamed). The model dir may be a gs:// URL: the pair is
trained locally and uploaded, .vocab first, .model last (each object whole).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import string
import tempfile
import uuid
from typing import Iterable, Optional

import seqio

from musiclm_jax import fileio

logger = logging.getLogger(__name__)

VOCAB_DIRNAME = "text_vocab"
VOCAB_FILENAME = "captions.model"
# seqio.SentencePieceVocabulary assumes these ids (T5's convention); there is no BOS.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def train_caption_vocabulary(
    captions: Iterable[str], model_prefix_path: str, *, vocab_size: int = 1000, seed: int = 0, model_type: str = "bpe"
) -> str:
    """Trains a SentencePiece model on `captions`; writes `<prefix>.model` and `<prefix>.vocab`
    (atomically: trained under a temporary prefix in the same folder, then renamed) and returns
    the .model path.

    `vocab_size` is an upper bound: a caption set too small to fill it gives a smaller vocabulary
    instead of an error. Empty captions are skipped; none left is a ValueError. `model_type` is
    SentencePiece's ("bpe", "unigram", ...). BPE is the default: on small caption sets unigram
    leaves common words ("and", "kick") split into fragments, so captions take ~50% more ids.
    """
    import sentencepiece as spm

    if fileio.is_url(model_prefix_path):
        with tempfile.TemporaryDirectory(prefix="musiclm-vocab-") as tmp:
            local = train_caption_vocabulary(
                captions,
                os.path.join(tmp, fileio.basename(model_prefix_path)),
                vocab_size=vocab_size,
                seed=seed,
                model_type=model_type,
            )
            prefix = fileio.resolve(model_prefix_path)
            fileio.copy(local[: -len(".model")] + ".vocab", prefix + ".vocab")
            fileio.copy(local, prefix + ".model")  # last: an existing .model means a complete pair
        return prefix + ".model"
    if int(vocab_size) < 4:
        raise ValueError(f"vocab_size must be at least 4 (pad, eos, unk and one piece), got {vocab_size}")
    texts, num_empty = [], 0
    for caption in captions:
        if isinstance(caption, bytes):
            caption = caption.decode("utf-8")
        if not isinstance(caption, str):
            raise TypeError(f"captions must be strings, got {type(caption).__name__} {caption!r}")
        if caption.strip():
            texts.append(caption)
        else:
            num_empty += 1
    if not texts:
        raise ValueError(
            f"no captions to train a caption vocabulary on ({num_empty} empty ones)"
            if num_empty
            else "no captions to train a caption vocabulary on"
        )
    texts.sort()  # the model depends on the captions, not on the order a source lists them in
    if int(vocab_size) >= 256:
        # Every printable ASCII character gets a piece (~95 of them), so that a prompt with a
        # character no caption had (a capital J, a '%') is spelt out instead of becoming <unk>.
        texts.append(" ".join(string.ascii_letters + string.digits + string.punctuation))

    prefix = os.path.abspath(model_prefix_path)
    directory = os.path.dirname(prefix)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(prefix)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    spm.set_random_generator_seed(int(seed))  # process-wide; nothing below samples, but pin it anyway
    try:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_prefix=tmp,
                model_type=model_type,
                vocab_size=int(vocab_size),
                pad_id=PAD_ID,
                eos_id=EOS_ID,
                unk_id=UNK_ID,
                bos_id=-1,
                # A caption set often supports fewer pieces than vocab_size (10,000 synthetic captions
                # give ~480); with the default hard limit SentencePiece then fails ("Vocabulary size
                # too high ... set it to a value <= N"). A soft limit makes vocab_size an upper bound.
                hard_vocab_limit=False,
                character_coverage=1.0,  # keep every character seen (a rare '#' must not become <unk>)
                input_sentence_size=0,
                shuffle_input_sentence=False,  # all captions, in the order given
                minloglevel=2,
            )
        except RuntimeError as e:
            raise ValueError(
                f"training a SentencePiece vocabulary (vocab_size={vocab_size}) on {len(texts)} captions failed: {e}"
            ) from e
        _set_model_prefix(tmp + ".model", os.path.basename(prefix))
        os.replace(tmp + ".vocab", prefix + ".vocab")
        os.replace(tmp + ".model", prefix + ".model")  # last: an existing .model means a complete pair
    finally:
        for leftover in (tmp + ".model", tmp + ".vocab"):
            if os.path.exists(leftover):
                os.remove(leftover)
    pieces = spm.SentencePieceProcessor(model_file=prefix + ".model").get_piece_size()
    logger.info(
        "caption vocabulary %s.model: %d pieces (vocab_size=%d) from %d captions%s",
        prefix,
        pieces,
        vocab_size,
        len(texts),
        f" ({num_empty} empty ones skipped)" if num_empty else "",
    )
    return prefix + ".model"


def _set_model_prefix(model_path: str, name: str) -> None:
    """The model records the prefix it was trained under (here a random temporary one): record
    `name` instead, so that the same captions give byte-identical files."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
        model.ParseFromString(f.read())
    model.trainer_spec.model_prefix = name
    with open(model_path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


def caption_vocabulary_path(model_dir: str) -> str:
    return fileio.join(model_dir, VOCAB_DIRNAME, VOCAB_FILENAME)


def caption_vocabulary(
    model_dir: str,
    source,
    *,
    vocab_size: int = 1000,
    split: str = "train",
    max_captions: Optional[int] = None,
    model_type: str = "bpe",
) -> str:
    """The caption vocabulary stored with the model: MODEL_DIR/text_vocab/captions.model.

    An existing file is returned as is (never retrained, whatever `source` and `vocab_size` say,
    so a resumed run keeps its ids). Otherwise one is trained on the captions of `split` of
    `source` (the first `max_captions` examples, default all): from `source.captions(split, limit)`
    where the source has it (the synthetic source: no audio is rendered, and every caption variant
    of an example counts), else from its examples.
    """
    if not model_dir:
        raise ValueError("caption_vocabulary needs a model_dir (e.g. caption_vocabulary.model_dir = %MODEL_DIR)")
    if max_captions is not None and max_captions <= 0:
        raise ValueError(f"max_captions must be None (all) or positive, got {max_captions}")
    path = caption_vocabulary_path(model_dir)
    if fileio.exists(path):
        logger.info("caption vocabulary: using the existing %s", path)
        return path
    if source is None:
        raise ValueError(f"{path} does not exist and caption_vocabulary has no source to train it on")
    captions_fn = getattr(source, "captions", None)
    if callable(captions_fn):
        # every training-family variant a task may draw (the synthetic source's augmentation),
        # where the source has them; held-out-family captions never reach the vocabulary
        takes_variants = "variants" in inspect.signature(captions_fn).parameters
        captions = list(
            captions_fn(split, max_captions, variants=True) if takes_variants else captions_fn(split, max_captions)
        )
    else:  # decodes the audio too: slow for large collections, but any source has examples()
        captions = [ex.caption for ex in itertools.islice(source.examples(split), max_captions)]
    name = getattr(source, "name", type(source).__name__)
    logger.info("caption vocabulary: training %s on %d %s captions of %s", path, len(captions), split, name)
    try:
        return train_caption_vocabulary(captions, path[: -len(".model")], vocab_size=vocab_size, model_type=model_type)
    except ValueError as e:
        raise ValueError(f"caption vocabulary for {model_dir} from the {split} split of {name}: {e}") from e


def load_caption_vocabulary(path: str) -> seqio.SentencePieceVocabulary:
    """The SentencePiece model at `path` as a seqio vocabulary (checked to use seqio's ids).
    seqio reads the file with TensorFlow's file layer (its own GCS client for gs://)."""
    if not fileio.isfile(path):
        raise FileNotFoundError(
            f"caption vocabulary {path} not found (train it with caption_vocabulary or train_caption_vocabulary)"
        )
    vocab = seqio.SentencePieceVocabulary(path)
    try:
        tok = vocab.tokenizer
    except Exception as e:  # noqa: BLE001  (sentencepiece raises RuntimeError/OSError for a bad file)
        raise ValueError(f"caption vocabulary {path} is not a SentencePiece model: {e}") from e
    ids = (tok.pad_id(), tok.eos_id(), tok.unk_id())
    if ids != (PAD_ID, EOS_ID, UNK_ID):
        raise ValueError(f"caption vocabulary {path} has pad/eos/unk ids {ids}; seqio needs {(PAD_ID, EOS_ID, UNK_ID)}")
    return vocab
