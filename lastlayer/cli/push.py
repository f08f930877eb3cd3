"""``lastlayer push``: an artifact's own files and a Hub model card to ``ORG/NAME`` on the
Hugging Face Hub."""

from __future__ import annotations

from lastlayer.config.commands import PushOptions as Options

HELP = ("Upload an adapter to the Hugging Face Hub: its own files and a model card rendered for "
        "the Hub (refused if a file names a path of this machine).")
EXAMPLES = """examples:
  lastlayer push adapters/medical/minilm-l6_lora-top2_crop acme/minilm-medical
  lastlayer push ADAPTER acme/minilm-medical --private --revision v2 --commit-message "40 steps"
  lastlayer push ADAPTER acme/minilm-medical --create-pr      # a pull request, not a commit

the token: HF_TOKEN or `hf auth login` (never printed); then anyone can
  lastlayer eval acme/minilm-medical --data labelled.jsonl.gz
  Embedder(BASE).load("acme/minilm-medical@v2")"""


def run(args: Options) -> int:
    """Push, then say where it went and how to load it."""
    from lastlayer.hub import push

    result = push(args.adapter, args.repo_id, private=args.private, revision=args.revision,
                  create_pr=args.create_pr, commit_message=args.commit_message)
    where = f"branch {args.revision}" if args.revision else "the default branch"
    print(f"Pushed {args.adapter} to {result.repo_url} ({where}): {len(result.files)} files "
          f"({', '.join(result.files)}), commit {result.commit_url}")
    if result.pr_url:
        print(f"Pull request: {result.pr_url}")
    pinned = args.repo_id + (f"@{args.revision}" if args.revision else "")
    print(f"Load it with: lastlayer eval {pinned} --data ...  or  Embedder(BASE).load({pinned!r})")
    return 0
