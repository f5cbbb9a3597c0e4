"""Write a tiny random AltCLIP checkpoint, with every processor file, for trying altclip-np offline in seconds.

    python tools/make_tiny_checkpoint.py DIR [--seed 0]

DIR gets what a Hub AltCLIP repo has: config.json + model.safetensors (a random transformers AltCLIPModel),
sentencepiece.bpe.model (a unigram SentencePiece model trained here on a small multilingual corpus),
tokenizer_config.json, special_tokens_map.json and preprocessor_config.json. Both altclip_np's and
transformers' AltCLIPProcessor.from_pretrained(DIR) load it. Needs torch and transformers.
"""
import argparse
import json
import sys
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "multilingual.txt"
# Used when the repo's test corpus is not around (e.g. the tool was copied elsewhere).
FALLBACK_CORPUS = """A photo of a cat sitting on a red sofa.
Two dogs are playing in the snow near the old wooden house.
Une photo d'un chat assis sur un canapé rouge.
Ein Foto von einem Hund, der im Schnee spielt.
Una foto de un coche rojo aparcado en la calle.
一只猫坐在红色的沙发上。
两只狗在雪地里玩耍。
赤いソファの上に座っている猫の写真。
빨간 소파에 앉아 있는 고양이 사진.
Фотография кошки на красном диване.
صورة قطة تجلس على أريكة حمراء.
लाल सोफे पर बैठी बिल्ली की तस्वीर।
Bir kırmızı kanepede oturan kedinin fotoğrafı.
Uma foto de um gato sentado em um sofá vermelho.
"""
IMAGE_SIZE = 30  # pixels, both the crop and the vision config's image_size
MAX_TEXT_TOKENS = 64  # model_max_length; the position table is 2 longer (RoBERTa's padding offset)


def corpus_lines():
    text = CORPUS.read_bytes().decode("utf-8") if CORPUS.is_file() else FALLBACK_CORPUS
    return [line for line in text.split("\n") if line.strip()]


def train_sentencepiece(directory, lines):
    """Train a unigram model; its size adapts to the corpus (it must at least cover the characters)."""
    import sentencepiece as spm

    prefix = directory / "sp"
    vocab = 2000 if len(lines) > 100 else 400
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(prefix), model_type="unigram",
                                   vocab_size=vocab, character_coverage=0.995, hard_vocab_limit=False,
                                   num_threads=2, minloglevel=2)
    Path(f"{prefix}.model").replace(directory / "sentencepiece.bpe.model")
    Path(f"{prefix}.vocab").unlink()


def write_processor_files(directory):
    specials = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                "unk_token": "<unk>", "pad_token": "<pad>",
                "mask_token": {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False,
                               "single_word": False}}
    tokenizer_config = {"tokenizer_class": "XLMRobertaTokenizer", "processor_class": "AltCLIPProcessor",
                        "model_max_length": MAX_TEXT_TOKENS, "clean_up_tokenization_spaces": False, **specials}
    preprocessor = {"image_processor_type": "CLIPImageProcessor", "processor_class": "AltCLIPProcessor",
                    "do_resize": True, "size": {"shortest_edge": IMAGE_SIZE}, "resample": 3,
                    "do_center_crop": True, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                    "image_mean": [0.48145466, 0.4578275, 0.40821073],
                    "image_std": [0.26862954, 0.26130258, 0.27577711], "do_convert_rgb": True}
    for name, content in (("tokenizer_config.json", tokenizer_config), ("special_tokens_map.json", specials),
                          ("preprocessor_config.json", preprocessor)):
        (directory / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def tiny_config(vocab_size):
    import transformers

    return transformers.AltCLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, project_dim=24, max_position_embeddings=MAX_TEXT_TOKENS + 2,
                         # at the default 0.02 every text gets nearly the same embedding; 0.2 tells them apart
                         initializer_range=0.2),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                           image_size=IMAGE_SIZE, patch_size=6),
        projection_dim=16)


def save_random_model(directory, vocab_size, seed):
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AltCLIPModel(tiny_config(vocab_size)).eval()
    with torch.no_grad():  # LayerNorms start at (1, 0): perturb them so they matter in comparisons
        for name, p in model.named_parameters():
            if any(s in name for s in ("LayerNorm", "layer_norm", "layrnorm", "pre_LN")):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)


def make_tiny_checkpoint(directory, seed=0):
    """Write the checkpoint into `directory` (created if needed); return it as a Path."""
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    train_sentencepiece(directory, corpus_lines())
    write_processor_files(directory)
    # The embedding table must cover every id the tokenizer can produce (fairseq ids + <mask>).
    vocab_size = len(transformers.XLMRobertaTokenizer.from_pretrained(directory))
    save_random_model(directory, vocab_size, seed)
    return directory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="where to write the checkpoint (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for the random weights (default 0)")
    args = parser.parse_args(argv)
    try:
        out = make_tiny_checkpoint(args.directory, args.seed)
    except ImportError as e:
        sys.exit(f"make_tiny_checkpoint: needs torch, transformers and sentencepiece ({e})")
    except OSError as e:
        sys.exit(f"make_tiny_checkpoint: cannot write {args.directory}: {e}")
    print(f"wrote a tiny AltCLIP checkpoint to {out}")


if __name__ == "__main__":
    main()
