"""DriveLM evaluation (no ROS): metrics, scoring, resumable/sharded runs, budget search, comparisons.

metrics      accuracy, BLEU/ROUGE-L/CIDEr (pycocoevalcap, no Java), object match, L, final score
scoring      which metric sees which question (DriveLM's official rules or lenient ones); metrics.json
bootstrap    seeded bootstrap 95% intervals over questions
weights      whether a checkpoint is trained: scores of random weights are flagged as meaningless
judge        optional GPT score from an OpenAI-compatible endpoint
submission   the challenge's submission.json
engine       answering with VLMRunner: per-keyframe batches, answers.jsonl resume, torchrun shards
run          ``prune2drive eval`` (also ``--score-only`` and ``--compare``)
optimize     ``prune2drive optimize``: TPE search of per-camera ratios
report       comparison table and plot of several runs (plots: the PNGs, fixed colours per method)
"""
