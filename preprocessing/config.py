"""Typed configuration of the data steps: where the data comes from, how it is split and preprocessed."""
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    # A typo in a config key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    source: str = Field(
        "sklearn:wine",
        description="Local path, http(s):// or file:// URL of a CSV/Parquet/JSON-lines file, or a bundled sample: "
        "sklearn:wine, sklearn:breast_cancer, sklearn:diabetes, sklearn:iris. Images: a folder with one sub-folder "
        "per class, a CSV/Parquet manifest (path and label columns), a .zip/.tar.gz of either, or sklearn:digits. "
        "Text: a table with a text column, or the bundled sample:reviews (Korean/English/emoji reviews).",
    )
    data_type: Literal["tabular", "image", "text"] = Field(
        "tabular", description="tabular: a table of features and a target; image: a folder with one sub-folder per "
        "class, a manifest, a .zip/.tar.gz, or sklearn:digits; text: a table with a text column, or sample:reviews.")
    format: Literal["auto", "csv", "parquet", "json"] = Field(
        "auto", description="File format; auto guesses from the file name and falls back to CSV."
    )
    target: str | None = Field(None, description="Target column; default 'target' (tables), 'label' (image manifests "
                               "and text tables).")
    task: Literal["auto", "classification", "regression"] = Field(
        "auto",
        description="auto: classification for text/bool targets and integer targets with few distinct values.",
    )
    features: list[str] | None = Field(None, description="Feature columns to use; default: all but the target.")
    ignore: list[str] = Field(default_factory=list, description="Columns to leave out (ids, timestamps...).")
    read_retries: int = Field(3, ge=0, description="Retries for transient errors reading a URL.")
    retry_delay_seconds: float = Field(2.0, ge=0, description="Seconds before the first retry of a URL read "
                                       "(doubling after each).")
    encoding_errors: Literal["error", "replace"] = Field(
        "error", description="Bytes that are not valid UTF-8 in a CSV/JSON file: error names the line; replace "
        "substitutes U+FFFD and logs how many were replaced.")

    max_file_mb: int = Field(2048, ge=1, description="A CSV/JSON/Parquet file read into memory may be at most this "
                             "large (checked before reading; larger Parquet: memory_budget_mb streams it).")
    max_line_mb: int = Field(64, ge=1, description="A CSV/JSON line may be at most this long (checked before "
                             "parsing: one enormous line took pandas minutes and gigabytes).")
    memory_budget_mb: int | None = Field(
        None, ge=16, description="Tables larger than memory: a local Parquet file or folder is read in record "
        "batches (pyarrow), validated, split and preprocessed batch by batch, and streamed to the trainer from disk, "
        "holding about this many MiB of data at once. Median/quartile/mode statistics then come from a uniform "
        "sample of 100,000 values per column. Default: the table is read into memory.")

    def target_column(self) -> str:
        return self.target or ("target" if self.data_type == "tabular" else "label")

    @model_validator(mode="after")
    def _streaming_is_tabular_parquet(self):
        streamable = self.data_type == "tabular" and self.format in ("auto", "parquet")
        if self.memory_budget_mb is not None and not streamable:
            raise ValueError("data.memory_budget_mb streams tabular Parquet data; leave it unset for "
                             f"data_type {self.data_type} / format {self.format}")
        return self


class SplitConfig(_Section):
    train: float = Field(0.7, gt=0, lt=1, description="Share of the rows for training.")
    val: float = Field(0.15, gt=0, lt=1, description="Share for validation (early stopping, LR schedule).")
    test: float = Field(0.15, gt=0, lt=1, description="Share for the test metrics and promotion.")

    @model_validator(mode="after")
    def _sums_to_one(self):
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions train+val+test must sum to 1, got {total:g}")
        return self


class TabularConfig(_Section):
    missing: Literal["impute", "drop_rows", "drop_columns"] = Field(
        "impute",
        description="impute: fill nulls; drop_rows: drop training rows with a null feature; drop_columns: drop "
        "columns whose null fraction exceeds max_null_fraction and impute the rest. Prediction never drops rows: "
        "nulls there are imputed with the training statistics.",
    )
    numeric_impute: Literal["mean", "median", "most_frequent", "constant"] = Field(
        "median", description="missing: impute: what fills a numeric null (constant: fill_value).")
    fill_value: float = Field(0.0, description="Value used by numeric_impute=constant.")
    categorical_impute: Literal["most_frequent", "constant"] = Field(
        "constant", description="constant: nulls become their own category '__missing__'."
    )
    max_null_fraction: float = Field(0.5, ge=0, le=1, description="missing: drop_columns: drop a column with "
                                     "more nulls than this share.")
    scaler: Literal["standard", "minmax", "robust", "none"] = Field(
        "standard", description="How numeric columns are scaled (statistics of the train split).")
    categorical: Literal["onehot", "index"] = Field(
        "onehot", description="onehot: one column per category plus an unknown bucket; index: one integer code, 0 = unknown."
    )
    max_categories: int = Field(50, ge=1, description="Most frequent categories kept per column; the rest are unknown.")
    scale_target: bool = Field(True, description="Standardise a regression target for training; predictions are unscaled.")


class ImageConfig(_Section):
    """Image preprocessing (data.data_type: image). Albumentations transforms are declared as
    {name: <albumentations class>, <argument>: <value>, ...}."""

    image_size: int = Field(32, ge=4, description="Side of the square the model sees (train crop, eval center crop).")
    allow_outside_paths: bool = Field(False, description="Let manifest paths and symbolic links lead outside the "
                                      "data folder (by default such a file is an error naming it).")
    resize: int | None = Field(None, ge=4, description="Images are decoded once, resized so the shorter side is "
                               "this, center-cropped square and cached; default image_size * 8/7.")
    channels: Literal[1, 3] = Field(3, description="1: grayscale, 3: RGB. Other modes are converted (alpha "
                                    "composited onto white, 16-bit scaled to 8-bit).")
    augment: list[dict] | None = Field(None, description="Train-time albumentations transforms; default: "
                                       "RandomCrop to image_size (a shift of up to 1/8 of the side) and nothing "
                                       "that changes orientation, so digits, letters and signs keep their meaning; "
                                       "add HorizontalFlip where mirror images mean the same class.")
    mean: list[float] | None = Field(None, description="Per-channel normalisation mean (0..1 scale); default: "
                                     "computed on the train split.")
    std: list[float] | None = None
    local_contrast: bool = Field(False, description="Per-image local contrast normalisation (for lighting changes).")
    max_bad_fraction: float = Field(0.05, ge=0, le=1, description="Fail when more files than this are unreadable.")
    path_column: str = Field("path", description="Manifest column with image paths (relative to the manifest).")
    workers: int = Field(2, ge=0, description="DataLoader worker processes for augmentation (0: in the trainer).")

    @property
    def cache_size(self) -> int:
        return self.resize or max(self.image_size, round(self.image_size * 8 / 7))

    def augmentations(self) -> list[dict]:
        if self.augment is not None:
            return self.augment
        return [{"name": "RandomCrop", "height": self.image_size, "width": self.image_size, "pad_if_needed": True}]


class TextConfig(_Section):
    """Text preprocessing (data.data_type: text): cleaning, tokenization, the vocabulary, subword pieces and word
    n-grams, fitted on the train split (preprocessing/text.py). The cleaning steps and vocabularies are saved in the
    state, so predict and serve apply them identically. Placeholders: xxurl, xxemail, xxnum."""

    text_column: str = Field("text", description="Column holding the texts.")
    normalize: Literal["nfkc", "none"] = Field("nfkc", description="Unicode normalisation (full-width to ASCII, "
                                               "compatibility jamo, ligatures...).")
    lowercase: bool = True
    strip_html: bool = Field(True, description="Remove <tags>.")
    urls: Literal["replace", "remove", "keep"] = Field("replace", description="replace: the token xxurl.")
    emails: Literal["replace", "remove", "keep"] = Field("replace", description="replace: the token xxemail.")
    numbers: Literal["replace", "remove", "keep"] = Field("replace", description="replace: the token xxnum.")
    remove_punctuation: bool = Field(True, description="Remove Unicode punctuation (category P). Letters of every "
                                     "script, symbols and emoji are kept.")
    tokenizer: Literal["word", "char_ngram"] = Field(
        "word", description="word: Unicode word boundaries (letters/digits runs; runs of other symbols such as "
        "emoji are tokens too); char_ngram: overlapping character n-grams within each word, for text without spaces.")
    ngram: int = Field(2, ge=1, le=6, description="char_ngram: n-gram length.")
    min_freq: int = Field(2, ge=1, description="Tokens seen fewer times in the train split become <unk> (or their "
                          "subword pieces, see subwords); also the minimum count of a kept word n-gram.")
    max_vocab: int = Field(20000, ge=1, description="Most frequent tokens kept (besides <pad> and <unk>); word "
                           "n-grams and subword pieces have their own caps.")
    subwords: Literal["all", "oov", "none"] = Field(
        "all", description="tokenizer word: fastText-style character n-grams ('pieces') of '<word>', "
        "subword_min..subword_max characters, their vocabulary fitted on the train split. all (fastText): after a "
        "text's words (and word n-grams) come the known pieces of every word, so an unknown word is still "
        "represented and related words share pieces; texts get ~10x more ids (truncation drops pieces first); for the "
        "mean encoder. oov: a word not in the vocabulary is cut into its longest known pieces, in its place "
        "(WordPiece-like; keeps a sequence for cnn/lstm/gru/transformer). none: unknown words are <unk>. <unk> "
        "remains only for a word without any known piece.")
    subword_min: int = Field(3, ge=1, le=10, description="Shortest subword piece, in characters (with < and >).")
    subword_max: int = Field(5, ge=1, le=10, description="Longest subword piece, in characters (with < and >).")
    subword_min_freq: int = Field(2, ge=1, description="Pieces seen fewer times in the train split are dropped. "
                                  "all counts the pieces of every train word; oov only those of the train split's "
                                  "own out-of-vocabulary words, so that every kept piece is trained.")
    max_subwords: int = Field(50000, ge=0, description="Most frequent subword pieces kept.")
    word_ngrams: int = Field(1, ge=1, le=5, description="fastText -wordNgrams: 2 adds each pair of consecutive "
                             "tokens (n-grams up to this n) as extra tokens after the text's own, fitted on the train "
                             "split with min_freq and max_word_ngrams. A bag-of-n-grams feature: use it with the "
                             "mean encoder (sequence encoders would read the n-grams as more text).")
    max_word_ngrams: int = Field(50000, ge=0, description="Most frequent word n-grams kept (their own cap, besides "
                                 "max_vocab).")
    max_len: int | None = Field(None, ge=1, description="Tokens per text after truncation; default: the "
                                "max_len_percentile of the train split's lengths, at most max_len_cap.")
    max_len_percentile: float = Field(95.0, gt=0, le=100)
    max_len_cap: int = Field(256, ge=1)
    max_chars: int = Field(20000, ge=1, description="Texts are cut to this many characters before cleaning, so an "
                           "enormous text costs no more than a long one.")
    hf_tokenizer: str | None = Field(None, description="A local Hugging Face model folder whose tokenizer replaces "
                                     "the cleaning and vocabulary above (set from model.pretrained_hf for "
                                     "model.encoder hf); max_len is then capped by the model's max positions.")

    @model_validator(mode="after")
    def _subword_range(self):
        if self.subword_min > self.subword_max:
            raise ValueError(f"text.subword_min {self.subword_min} must not exceed text.subword_max {self.subword_max}")
        return self
