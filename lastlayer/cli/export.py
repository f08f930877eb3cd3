"""``lastlayer export``: an adapter merged into its base, written as a folder that
sentence-transformers loads (giving lastlayer's vectors)."""

from __future__ import annotations

from lastlayer.config.commands import ExportOptions as Options

HELP = ("Merge an adapter into its base and write a folder that sentence-transformers loads, "
        "giving lastlayer's vectors.")
EXAMPLES = """examples:
  lastlayer export adapters/medical/minilm-l6_lora-top2_crop exported/minilm-medical
  lastlayer export ADAPTER --format sentence-transformers OUT
  lastlayer export ADAPTER OUT --overwrite                  # replace an earlier export
  lastlayer export ADAPTER OUT --base /models/tiny-bert     # the base is a local folder

then: SentenceTransformer("exported/minilm-medical").encode(texts)"""


def run(args: Options) -> int:
    """Check what can be refused first, then merge, write and (unless told not to) verify."""
    from lastlayer.hub import resolve_adapter
    from lastlayer.inference.export import check_export_dir, check_exportable

    adapter = resolve_adapter(args.adapter)  # a Hub id: its cached snapshot
    check_exportable(adapter)  # refusals first, before the base is loaded
    check_export_dir(args.out, args.overwrite)
    from lastlayer.inference.export import export_sentence_transformers

    result = export_sentence_transformers(adapter, args.out, overwrite=args.overwrite,
                                          verify=not args.no_verify, base=args.base)
    if result.min_cosine is not None:
        check = (f"checked: sentence-transformers gives lastlayer's vectors (least cosine "
                 f"{result.min_cosine:.7f} over {result.texts} texts)")
    else:
        check = "not checked (--no-verify, or sentence-transformers is not installed)"
    print(f"Wrote {result.path} ({args.format}; {check}).")
    if result.dequantized_gguf:
        print("The base was a GGUF file: the saved weights are its dequantized copy.")
    print(f'Load it with: SentenceTransformer("{result.path}")')
    return 0
