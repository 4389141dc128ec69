"""Mutation check: break one feature of the core at a time and see the suite notice.

Each mutant replaces one snippet of moejax/ (it must occur exactly once) in a throw-away copy
of the working tree and runs the tests named for it there; the mutant is caught when at least
one of them fails. The named tests are first run on the unchanged copy, where they must pass:
otherwise a "caught" would prove nothing. Slow (one pytest process per mutant), so it is not
part of the default suite; README records its last result.

Usage:
  python benchmarks/mutation_check.py                 # every mutant
  python benchmarks/mutation_check.py --only no_restore nan_guard_off
  python benchmarks/mutation_check.py --json benchmarks/results/mutation_check.json

The JSON keeps one row per mutant with the date it last ran: an `--only` run updates its rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    what: str  # the feature it switches off, in words
    path: str  # file under the repository root
    old: str  # snippet replaced (must occur exactly once)
    new: str
    tests: tuple[str, ...]  # pytest node ids; at least one must fail


MUTANTS = (
    Mutant("no_restore", "checkpoints never restore: every run starts from scratch",
           "moejax/train/checkpoint.py",
           "        restore_one = functools.partial(_restore_step, self._manager, targets)\n",
           "        return None\n",
           ("tests/train/test_trainer.py::test_resume_is_bitwise_identical",)),
    Mutant("no_sharding", "shard_model_and_optimizer leaves the state on one device",
           "moejax/parallel/sharding.py",
           "in place.\"\"\"\n", "in place.\"\"\"\n    return\n",
           ("tests/parallel/test_sharding.py::test_parameters_and_moments_are_placed_by_the_rules",)),
    Mutant("unknown_parameter_replicated",
           "a parameter the sharding rules do not know is replicated silently, not an error",
           "moejax/parallel/sharding.py",
           "    known = \", \".join(", "    return (None,) * ndim\n    known = \", \".join(",
           ("tests/parallel/test_sharding.py::"
            "test_a_parameter_the_rules_do_not_know_is_an_error_naming_it",)),
    Mutant("init_unsharded", "the trainer initialises the state on one device",
           "moejax/train/state.py", "out_shardings=shardings)(", "out_shardings=None)(",
           ("tests/parallel/test_sharding.py::"
            "test_state_initialised_in_its_shardings_equals_the_eager_build",)),
    Mutant("scan_records_out_of_order",
           "a scanned stack's routing records come out unit-major, not in depth order",
           "moejax/models/decoder.py", "lambda a: a.reshape(-1, *a.shape[2:])",
           "lambda a: jnp.swapaxes(a, 0, 1).reshape(-1, *a.shape[2:])",
           ("tests/models/test_decoder.py::test_scanned_layers_equal_unrolled",)),
    Mutant("init_from_ignored", "a fresh run with train.init_from starts from random weights",
           "moejax/train/trainer.py", "    elif train_cfg.init_from:", "    elif False:",
           ("tests/train/test_init_from.py::test_a_fresh_run_starts_from_the_export",)),
    Mutant("generate_ignores_cache", "decoding attends to the new token only, not the cache",
           "moejax/layers/attention.py",
           "visible = jnp.arange(cache_k.shape[1])[None, :] <= query_slot[:, None]",
           "visible = jnp.arange(cache_k.shape[1])[None, :] == query_slot[:, None]",
           ("tests/models/test_generate.py::test_greedy_equals_argmax_of_the_cache_free_forward",)),
    Mutant("qk_norm_skipped", "model.qk_norm builds the q/k norms but attention skips them",
           "moejax/layers/attention.py",
           "        return rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)\n",
           "        return q, k\n",
           ("tests/models/test_hf_families.py::"
            "test_fixture_logits_router_logits_and_greedy_tokens[qwen3_moe]",
            "tests/models/test_decoder.py::test_decoder_matches_reference[topk-True-True]")),
    Mutant("qwen3_dense_layers_ignored", "a Qwen3 config's mlp_only_layers are read as MoE layers",
           "moejax/models/hf_families.py", "set(hf.get(\"mlp_only_layers\") or ())", "set()",
           ("tests/models/test_hf_dir.py::"
            "test_qwen3_config_both_ways_dense_layers_and_what_is_refused",
            "tests/models/test_hf_families.py::"
            "test_fixture_logits_router_logits_and_greedy_tokens[qwen3_moe]")),
    Mutant("norm_topk_prob_ignored", "Qwen3's unnormalised top-k gates are renormalised",
           "moejax/models/hf_families.py",
           "Key(\"moe.router.normalize_gates\", (\"norm_topk_prob\",), default=False, cast=bool,",
           "Key(\"moe.router.normalize_gates\", (\"nope\",), default=True, cast=bool,",
           ("tests/models/test_hf_families.py::"
            "test_fixture_logits_router_logits_and_greedy_tokens[qwen3_moe]",)),
    Mutant("tpu_sorted_kernel_gathers", "on TPU the sorted cosine keeps its in-kernel row gather",
           "moejax/kernels/pairwise_cosine.py", 'if _common.backend() == "tpu":', "if False:",
           ("tests/kernels/test_pairwise_cosine.py::"
            "test_tpu_lowers_to_mosaic_and_its_interpret_mode_matches_loop",)),
    Mutant("offload_lru_is_fifo", "the offload cache forgets that a hit was used (FIFO, not LRU)",
           "moejax/experiments/offload.py",
           "                    hits += 1\n                    cache.move_to_end(expert)\n",
           "                    hits += 1\n",
           ("tests/experiments/test_offload.py::test_lru_on_one_router",)),
    Mutant("last_async_save_unsealed", "a run's last async checkpoint gets no checksums",
           "moejax/train/checkpoint.py",
           "        self._manager.wait_until_finished()\n        self._seal()\n",
           "        self._manager.wait_until_finished()\n",
           ("tests/train/test_checkpoint.py::test_export_reads_back_with_plain_orbax",)),
    Mutant("dense_ignores_drops", "the dense engine computes dropped slots",
           "moejax/moe/engines/dense.py",
           "kept = plan.kept[..., None]", "kept = jnp.ones_like(plan.kept)[..., None]",
           ("tests/moe/test_engines.py::test_engine_matches_reference",)),
    Mutant("dropless_ignores_drops", "the dropless engine computes a capacity plan's drops",
           "moejax/moe/engines/dropless.py",
           "kept = plan.kept[..., None]", "kept = jnp.ones_like(plan.kept)[..., None]",
           ("tests/moe/test_engines.py::test_engine_matches_reference",)),
    Mutant("tiled_dropless_ignores_drops",
           "the tiled dropless engine (CPU) computes a capacity plan's drops",
           "moejax/moe/engines/dropless.py",
           "    kept = plan.kept  #", "    kept = jnp.ones_like(plan.kept)  #",
           ("tests/moe/test_engines.py::test_engine_matches_reference",)),
    Mutant("capacity_ignores_drops", "the capacity engine reads dropped slots from the buffers",
           "moejax/moe/engines/capacity.py",
           "slot_row = jnp.where(plan.kept, slot_row, plan.num_experts * capacity)",
           "slot_row = jnp.minimum(slot_row, plan.num_experts * capacity - 1)",
           ("tests/moe/test_engines.py::test_engine_matches_reference",
            "tests/moe/test_topk.py::test_block_and_record_match_reference")),
    Mutant("capacity_plan_uncapped",
           "the ENGINES row of moe.engine=capacity makes no capacity plan",
           "moejax/moe/engines/__init__.py",
           '"capacity": EngineKind(capacity_engine, caps_capacity=True),',
           '"capacity": EngineKind(capacity_engine),',
           ("tests/moe/test_topk.py::test_block_and_record_match_reference",)),
    Mutant("group_start_inclusive",
           "DispatchPlan.group_start is the inclusive cumsum (each group one group late)",
           "moejax/moe/dispatch.py",
           "        return exclusive_cumsum(self.tokens_per_expert)\n",
           "        return jnp.cumsum(self.tokens_per_expert)\n",
           ("tests/moe/test_engines.py::test_engine_matches_reference",)),
    Mutant("router_ignores_disable_top1", "disable_top1 keeps each token's first choice",
           "moejax/moe/router.py", "    if disable_top1:\n", "    if False:\n",
           ("tests/moe/test_router.py::test_disable_top1",
            "tests/moe/test_cartesian.py::test_disable_top1_reaches_both_routers",
            "tests/moe/test_deepseek.py::test_disable_top1_reaches_the_routed_experts")),
    Mutant("blocks_drop_disable_top1", "the Cartesian layer does not pass disable_top1 to B",
           "moejax/moe/cartesian.py",
           "y, record_b = self.sub_b(h, disable_top1=disable_top1)",
           "y, record_b = self.sub_b(h)",
           ("tests/moe/test_cartesian.py::test_disable_top1_reaches_both_routers",
            "tests/models/test_decoder.py::test_decoder_matches_reference")),
    Mutant("group_score_max_sums_two",
           "router.group_score='max' (DeepSeek-V2) scores a group by its two best, not its best",
           "moejax/moe/router.py", '{"top2_sum": 2, "max": 1}', '{"top2_sum": 2, "max": 2}',
           ("tests/moe/test_router.py::"
            "test_deepseek_v2_group_limited_router_equals_transformers",
            "tests/moe/test_router.py::test_route_matches_reference")),
    Mutant("sigmoid_probs_are_softmax",
           "a sigmoid router's probs (what lb / cp / var read) are softmax(r), not s / sum s",
           "moejax/moe/router.py", '"sigmoid": RouterKind(normalised_sigmoid,',
           '"sigmoid": RouterKind(_softmax,',
           ("tests/moe/test_router.py::test_sigmoid_probs_are_the_normalised_sigmoid",)),
    Mutant("shared_gate_without_sigmoid",
           "shared_mix='sigmoid' (Qwen2-MoE) scales the shared expert by u w_c, not sigmoid",
           "moejax/moe/combine.py", "routed + jax.nn.sigmoid(mix_logits).astype(",
           "routed + (mix_logits).astype(",
           ("tests/moe/test_shared.py::test_sigmoid_gated_block_matches_reference",
            "tests/moe/test_shared.py::test_ffn_ref_deepseek_layer_with_mix_kernel")),
    Mutant("losses_drop_a_router", "every loss averages all routers but the last",
           "moejax/regularizers/_routers.py",
           "    return per_router.mean(), per_router",
           "    kept = per_router[:-1] if per_router.shape[0] > 1 else per_router\n"
           "    return kept.mean(), per_router",
           ("tests/regularizers/test_load_balance.py::test_matches_reference_stacked",
            "tests/regularizers/test_total.py::test_all_weights_on_decoder_record_match_reference")),
    Mutant("sp_counts_dropped_pairs",
           "the specialization loss counts dropped slots' pairs as cosine 0 (dilution)",
           "moejax/regularizers/specialization.py",
           "kept = (jnp.diagonal(cos, axis1=-2, axis2=-1) > 0.5) & valid[:, None, :]",
           "kept = jnp.broadcast_to(valid[:, None, :], cos.shape[:3])",
           ("tests/regularizers/test_specialization.py::test_dropped_slots_leave_the_mean",)),
    Mutant("sequence_lb_is_batch_lb", "lb_variant=sequence computes the micro-batch balance",
           "moejax/regularizers/total.py",
           "sequence_length=batch.sequence_length)", "sequence_length=None)",
           ("tests/train/test_step.py::test_train_step_load_balance_variants_against_numpy",)),
    Mutant("trainer_ignores_accumulation", "the trainer passes 1 micro-batch to the step",
           "moejax/train/trainer.py", "train_cfg.grad_accumulation, np.bool_(logged),",
           "1, np.bool_(logged),",
           ("tests/train/test_trainer.py::test_gradient_accumulation_through_the_trainer",)),
    Mutant("nan_guard_off", "a non-finite step does not stop the run",
           "moejax/train/trainer.py", "    if not bad:\n        return\n", "    return\n",
           ("tests/train/test_trainer.py::test_non_finite_step_stops_unsaved_and_resumes",)),
    Mutant("nan_guard_skips_deferred",
           "the flags of a step neither logged nor saved are never read",
           "moejax/train/trainer.py",
           "            if unchecked is not None:  # the previous step's flags",
           "            if False:  # the previous step's flags",
           ("tests/train/test_trainer.py::test_non_finite_step_stops_unsaved_and_resumes",)),
    Mutant("nan_guard_loss_only", "the NaN guard reads the loss only (as before issue 14)",
           "moejax/train/trainer.py",
           "for name in (schema.LOSS, schema.TOTAL_LOSS, schema.GRAD_NORM)",
           "for name in (schema.LOSS,)",
           ("tests/train/test_trainer.py::test_non_finite_step_stops_unsaved_and_resumes",)),
    Mutant("checksums_unverified", "restore and export skip the checksums",
           "moejax/models/checksums.py",
           '    listed = step_dir / CHECKSUMS\n', '    listed = step_dir / "nothing"\n',
           ("tests/train/test_checkpoint.py::test_corrupt_latest_falls_back_with_a_warning",
            "tests/train/test_checkpoint.py::test_altered_step_is_not_exported")),
    Mutant("metrics_not_reconciled", "a resumed run appends to the interrupted run's rows",
           "moejax/train/trainer.py", "keep_through_step=start)", "keep_through_step=10**9)",
           ("tests/reliability/test_cases.py::test_killed_run_resumes_with_every_step_logged_once",)),
    Mutant("domain_mean_keeps_gaps",
           "per-domain lists are averaged with their NaN gaps (domains the eval did not see)",
           "moejax/reporting/metrics.py", "        seen = ~np.isnan(values)\n",
           "        seen = np.ones(values.shape, dtype=bool)\n",
           ("tests/reporting/test_metrics.py::test_lists_reduce_by_their_keys_schema",)),
    Mutant("sigterm_evaluates", "SIGTERM evaluates before it saves (22 s on the default run)",
           "moejax/train/trainer.py", "            last = step_number == train_cfg.steps\n",
           "            last = step_number == train_cfg.steps or stopping is not None\n",
           ("tests/train/test_trainer.py::test_sigterm_saves_and_resumes",)),
    Mutant("sigterm_exits_0", "SIGTERM exits 0 like a finished run",
           "moejax/train/trainer.py", "    if stopped is not None:\n        raise stopped\n", "",
           ("tests/train/test_trainer.py::test_sigterm_saves_and_resumes",)),
    Mutant("resume_config_unchecked", "a changed model config reaches the tensor restore",
           "moejax/train/trainer.py", "        _check_resume_config(saved_config, config, "
           "checkpointer.directory)\n", "        pass\n",
           ("tests/reliability/test_cases.py::test_changed_model_is_named_by_its_config_keys",)),
    Mutant("lock_off", "the workdir lock is never taken",
           "moejax/train/workdir_lock.py", "            handle = _acquire(path)\n",
           "            handle = None\n",
           ("tests/train/test_workdir_lock.py",
            "tests/train/test_trainer.py::test_busy_workdir_stops_a_second_run_before_any_work")),
    Mutant("writer_lock_off", "two writers of one output directory both write it (no flock)",
           "moejax/atomic.py", "            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n",
           "            pass\n",
           ("tests/reliability/test_writers.py::"
            "test_a_second_export_to_the_same_out_is_refused_in_one_line",)),
    Mutant("writer_replaces_before_complete",
           "--overwrite deletes the old output before the new one is complete",
           "moejax/atomic.py", "        tmp = _new_sibling(out, _TMP)\n",
           "        _remove(out)\n        tmp = _new_sibling(out, _TMP)\n",
           ("tests/reliability/test_writers.py::"
            "test_no_space_half_way_leaves_the_old_output_or_nothing",
            "tests/reliability/test_writers.py::"
            "test_a_data_error_while_preparing_over_an_old_corpus")),
    Mutant("checkpoints_dir_unlocked",
           "the directory a workdir's checkpoints lead to is not locked: two workdirs whose "
           "checkpoints link to one directory train into it at once",
           "moejax/train/workdir_lock.py", "            _lock_checkpoints(workdir, held)\n",
           "            pass\n",
           ("tests/reliability/test_training_faults.py::"
            "test_two_workdirs_whose_checkpoints_lead_to_one_directory_do_not_train_at_once",)),
    Mutant("skipped_save_ignored", "a save Orbax skips (returns False) counts as written",
           "moejax/train/checkpoint.py", "        if not saved:\n", "        if False:\n",
           ("tests/reliability/test_training_faults.py::"
            "test_a_checkpoint_that_is_not_written_stops_the_run_at_its_step[skipped]",)),
    Mutant("extended_schedule_restretched",
           "a resume lays the decay over its own train.steps: extending a run re-stretches it",
           "moejax/train/trainer.py",
           "    train_cfg = resolve_decay_steps(train_cfg, saved_config)\n",
           "    train_cfg = resolve_decay_steps(train_cfg, None)\n",
           ("tests/reliability/test_training_faults.py::"
            "test_extending_a_run_on_resume_keeps_every_planned_learning_rate",)),
    Mutant("export_layout_not_converted", "an export is read in its stored layout, not the one "
           "asked for", "moejax/models/weights.py",
           "    return spec, stack_params(spec, restored)\n", "    return spec, restored\n",
           ("tests/train/test_checkpoint.py::test_export_reads_back_with_plain_orbax",)),
    Mutant("dropless_option_unbound", "moe.grouped_matmul never reaches the dropless engine",
           "moejax/moe/engines/__init__.py",
           "EngineKind(dropless_engine, spec_options=(\"grouped_matmul\",))",
           "EngineKind(dropless_engine)",
           ("tests/moe/test_topk.py::test_the_dropless_engine_gets_the_grouped_matmul_option",)),
    Mutant("loss_mask_ignored", "data.loss_on='completion' trains on the prompts too",
           "moejax/train/step.py",
           "lm_loss(logits, tokens[:, 1:], None if trained is None else trained[:, 1:], count)",
           "lm_loss(logits, tokens[:, 1:], None, count)",
           ("tests/train/test_step.py::"
            "test_masked_loss_is_the_mean_over_the_step_s_trained_targets",)),
    Mutant("bits_per_token_as_bytes", "bits per byte divides by tokens, not the bytes they cover",
           "moejax/train/step.py", "\"bytes\": nbytes.sum(),", "\"bytes\": read.sum(),",
           ("tests/train/test_step.py::test_eval_step_reads_trained_targets_and_their_bytes",
            "tests/train/test_real_text.py::"
            "test_a_tokenizer_instruction_records_and_a_mixture_train")),
    Mutant("byte_eos_for_every_tokenizer", "documents end with the byte EOS 258, not the "
           "tokenizer's", "moejax/data/pipeline.py",
           "            out[\"tokens\"][at + count] = self._eos_id\n",
           "            out[\"tokens\"][at + count] = EOS_ID\n",
           ("tests/data/test_shards.py::test_windows_end_documents_with_the_tokenizer_s_eos_"
            "and_shards_name_their_tokenizer",)),
    Mutant("vocabulary_unchecked", "a model smaller than the tokenizer's vocabulary trains",
           "moejax/data/pipeline.py", "    if vocab_size < tokenizer.vocab_size:\n",
           "    if False:\n",
           ("tests/train/test_real_text.py::"
            "test_a_vocabulary_smaller_than_the_tokenizer_is_refused_before_work",)),
    Mutant("shard_tokenizer_unchecked", "shards of another tokenizer are read without a word",
           "moejax/data/pipeline.py",
           "        if written.get(\"fingerprint\") != tokenizer.fingerprint:\n",
           "        if False:\n",
           ("tests/data/test_shards.py::test_windows_end_documents_with_the_tokenizer_s_eos_"
            "and_shards_name_their_tokenizer",)),
    Mutant("changed_data_resumes", "a resume on changed data files goes on silently",
           "moejax/train/trainer.py",
           "        run_data.check_same_data(restored, fingerprint, data_spec)\n", "        pass\n",
           ("tests/train/test_real_text.py::test_a_resume_on_changed_data_stops_naming_the_file",)),
    Mutant("mixture_ignored", "data.mixture leaves the training split as it is",
           "moejax/data/pipeline.py", "    if split == \"train\" and spec.mixture:\n",
           "    if False:\n",
           ("tests/data/test_mixture.py::test_the_training_stream_has_the_realised_shares",)),
    Mutant("hf_family_inferred", "the HF family is inferred from model.qk_norm, not named",
           "moejax/models/hf_families.py", "    family = FAMILIES[spec.hf_family]\n",
           "    family = FAMILIES[\"qwen3_moe\" if spec.qk_norm else \"mixtral\"]\n",
           ("tests/models/test_hf_dir.py::test_the_family_is_named_never_inferred",)),
    Mutant("hf_linear_export_untransposed", "to_hf writes [in, out] linear weights untransposed",
           "moejax/models/hf_tensors.py", "\"linear\": (lambda t, h: t.T, lambda o, h: o.T),",
           "\"linear\": (lambda t, h: t.T, lambda o, h: o),",
           ("tests/models/test_convert_hf.py",)),
    Mutant("hf_expected_names_unbounded",
           "every name an HF config implies is made before the first missing one is reported",
           "moejax/models/convert_hf.py",
           "            if len(missing) > _SHOWN:\n                break\n",
           "            pass\n",
           ("tests/reliability/test_hf_inputs.py::"
            "test_expected_names_are_made_lazily_whatever_the_config_says",)),
    Mutant("hf_non_finite_imported", "an HF tensor holding NaN or infinity is imported",
           "moejax/models/convert_hf.py", "    if not finite.all():\n", "    if False:\n",
           ("tests/reliability/test_hf_inputs.py::"
            "test_weights_that_are_not_finite_floats_are_refused",)),
    Mutant("hf_index_escapes", "an HF index entry outside the directory is read",
           "moejax/models/hf_dir.py",
           "    if not any(path.is_relative_to(allowed) for allowed in roots):\n",
           "    if False:\n",
           ("tests/reliability/test_hf_inputs.py::"
            "test_index_entries_outside_the_directory_are_refused",)),
    Mutant("negative_loss_weight_allowed", "a negative weight of a LOSSES term is accepted",
           "moejax/regularizers/total.py",
           "        weights = (*LOSSES, \"bias_rate\")",
           "        weights = (\"bias_rate\",)",
           ("tests/train/test_specs.py::test_every_loss_weight_must_be_non_negative",)),
    Mutant("memory_check_off", "a train step larger than the devices' memory is not refused",
           "moejax/train/plan.py", "    mesh, _ = mesh_and_engine(specs)\n    memory, where",
           "    return\n    mesh, _ = mesh_and_engine(specs)\n    memory, where",
           ("tests/reliability/test_inputs.py::"
            "test_xla_plan_decides_when_the_estimate_exceeds_memory",)),
    Mutant("sample_text_unescaped", "moejax-sample prints NUL and other control bytes raw",
           "moejax/cli/sample.py", "print(_printable(tokenizer.decode(",
           "print((tokenizer.decode(",
           ("tests/reliability/test_inputs.py::test_sampled_control_characters_are_escaped",)),
    Mutant("config_exit_uncaught", "a config file's sys.exit(0) ends the command with status 0",
           "moejax/cli/_command.py", "    except SystemExit as exit_:\n",
           "    except ValueError as exit_:\n",
           ("tests/reliability/test_inputs.py::"
            "test_a_config_file_that_exits_or_never_ends_is_one_line",)),
    Mutant("mla_rope_always_half_split",
           "MLA rotates the RoPE coordinates as two halves whatever model.mla.rope_interleave",
           "moejax/layers/mla.py",
           "    return (apply_rope_interleaved if interleave else apply_rope)(x, cos, sin)",
           "    return apply_rope(x, cos, sin)",
           ("tests/layers/test_mla.py::test_mla_matches_reference",
            "tests/models/test_hf_families.py::"
            "test_fixture_logits_router_logits_and_greedy_tokens")),
    Mutant("yarn_softmax_mscale_dropped",
           "YaRN's mscale_all_dim no longer corrects the softmax scale (DeepSeek)",
           "moejax/layers/rope.py", "    if scaling is not None and scaling.mscale_all_dim:",
           "    if False:",
           ("tests/layers/test_rope.py::test_softmax_scale_matches_deepseek",
            "tests/models/test_hf_families.py::"
            "test_fixture_logits_router_logits_and_greedy_tokens")),
    Mutant("clip_qkv_ignored", "OLMoE's clip_qkv clamps nothing", "moejax/layers/attention.py",
           "        q, k, v = (jnp.clip(t, -clip_qkv, clip_qkv) for t in (q, k, v))",
           "        q, k, v = q, k, v",
           ("tests/layers/test_attention.py::test_new_options_match_reference",
            "tests/models/test_hf_families.py::"
            "test_fixture_logits_router_logits_and_greedy_tokens")),
    Mutant("selection_bias_not_converted",
           "DeepSeek-V3's e_score_correction_bias is neither read nor written",
           "moejax/models/hf_tensors.py",
           '"router_bias": lambda spec, i: _is_moe(spec, i) and spec.moe.router.use_bias,',
           '"router_bias": lambda spec, i: False,',
           ("tests/models/test_hf_families.py::test_import_export_round_trip_is_bit_exact",
            "tests/models/test_hf_families.py::"
            "test_fixture_logits_router_logits_and_greedy_tokens")),
    Mutant("mtp_layers_kept", "DeepSeek-V3's multi-token prediction layers are not skipped",
           "moejax/models/hf_dir.py", "    if count == 0:\n        return tensors",
           "    if True:\n        return tensors",
           ("tests/models/test_hf_families.py::"
            "test_deepseek_v3_mtp_layers_are_skipped_with_a_warning_naming_them",)),
    Mutant("greedy_flag_any_token",
           "a continuation counts as greedy when any (not every) token is the argmax",
           "moejax/evaluation/scoring.py", "bool(np.all(greedy[slot][mask]))",
           "bool(np.any(greedy[slot][mask]))",
           ("tests/evaluation/test_scoring.py::test_scores_and_greedy_flags_match_numpy",)),
    Mutant("throughput_counts_every_step", "tokens_per_s averages every step since the start, "
           "the compiling one included", "moejax/train/accounting.py",
           "        seconds = sum(self.steps[self.interval:])\n"
           "        steps = len(self.steps) - self.interval\n",
           "        seconds = sum(self.steps)\n        steps = len(self.steps)\n",
           ("tests/train/test_evaluators.py::"
            "test_run_clock_rates_cover_the_interval_s_training_steps_only",)),
    Mutant("holm_unadjusted", "the summary's verdicts read each claim's raw p-value",
           "moejax/experiments/stats.py",
           "    difference = holm([test.p_value for test in tests])",
           "    difference = [test.p_value for test in tests]",
           ("tests/experiments/test_stats.py::"
            "test_family_verdicts_tell_no_effect_from_undecided",)),
    Mutant("master_update_on_bf16_params",
           "the float32 update is added to the bfloat16 parameters, not taken from the master "
           "weights (an update below bfloat16's resolution is lost)",
           "moejax/train/optim.py", "        nnx.update(model, rounded(master, params))\n",
           "        nnx.update(model, optax.apply_updates(params, updates))\n",
           ("tests/train/test_master_weights.py::"
            "test_updates_below_bfloat16_resolution_add_up_in_the_master_weights",
            "tests/train/test_master_weights.py::"
            "test_master_weights_are_the_float32_init_and_the_params_stay_them_rounded")),
    Mutant("variant_scale_ignored",
           "a variant's own scale (the decisive suite's 1,000 steps) is not applied",
           "moejax/experiments/suites.py",
           "    scale = QUICK_SCALE if options.quick else {**DEFAULT_SCALE, **variant.scale}",
           "    scale = QUICK_SCALE if options.quick else DEFAULT_SCALE",
           ("tests/experiments/test_runner.py::"
            "test_a_variants_scale_lengthens_the_default_scale_only",)),
    Mutant("summary_row_without_test",
           "the summary's row of a claim is its largest scale even where that scale has no "
           "numbers for the claim's metric",
           "moejax/experiments/summary.py",
           "key=lambda r: (r.result.test.measured, r.steps or 0, r.result.test.n)",
           "key=lambda r: (r.steps or 0, r.result.test.n)",
           ("tests/experiments/test_suite_report.py::"
            "test_a_longer_run_without_the_claims_metric_does_not_replace_one_with_it",)),
    Mutant("unmeasured_claim_undecided",
           "a claim with no paired numbers (its metric not measured) reads 'undecided'",
           "moejax/experiments/stats.py", "        if not test.measured:\n", "        if False:\n",
           ("tests/experiments/test_stats.py::"
            "test_family_verdicts_tell_no_effect_from_undecided",)),
)


def _copy_tree(destination: pathlib.Path) -> None:
    """The working tree as git sees it (tracked and untracked-but-not-ignored files)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source, target = ROOT / name, destination / name
        if source.is_symlink():  # e.g. configs/ -> moejax/configs: kept a link, as git keeps it
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(source), target)
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _apply(tree: pathlib.Path, mutant: Mutant) -> None:
    path = tree / mutant.path
    text = path.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.name}: the snippet occurs {text.count(mutant.old)} "
                         f"times in {mutant.path} (the code changed: update the mutant)")
    path.write_text(text.replace(mutant.old, mutant.new))


def _pytest(tree: pathlib.Path, tests, timeout: int) -> tuple[int, list[str], float]:
    """Runs the tests in `tree` with its own moejax first on the path -> (rc, failed, s)."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    started = time.perf_counter()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider",
             *tests], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, ["(timed out)"], time.perf_counter() - started
    failed = re.findall(r"^FAILED (.+?)(?: - .*)?$", result.stdout, re.MULTILINE)
    if result.returncode not in (0, 1):  # 2-5: interrupted, internal, usage, no tests
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
    return result.returncode, failed, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="mutant names (default: all)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/mutation_check.json"))
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"--only: unknown mutants {sorted(unknown)}; allowed: "
                     f"{', '.join(m.name for m in MUTANTS)}")
    with tempfile.TemporaryDirectory(prefix="moejax-mutants-") as scratch:
        clean = pathlib.Path(scratch) / "clean"
        _copy_tree(clean)
        which = subprocess.run([sys.executable, "-c", "import moejax; print(moejax.__file__)"],
                               cwd=clean, env=dict(os.environ, PYTHONPATH=str(clean)),
                               capture_output=True, text=True, check=True).stdout.strip()
        if not which.startswith(str(clean)):
            raise SystemExit(f"the copy's tests would import {which}, not the copy")
        all_tests = sorted({t for m in chosen for t in m.tests})
        rc, failed, seconds = _pytest(clean, all_tests, args.timeout * 2)
        print(f"unchanged tree: named tests {'pass' if rc == 0 else 'FAIL'} ({seconds:.0f} s)")
        if rc != 0:
            print("the named tests must pass before mutating:", failed)
            return 1
        rows = []
        for mutant in chosen:
            tree = pathlib.Path(scratch) / mutant.name
            shutil.copytree(clean, tree)
            _apply(tree, mutant)
            rc, failed, seconds = _pytest(tree, mutant.tests, args.timeout)
            caught = rc == 1 and bool(failed)
            rows.append(dict(mutant=mutant.name, what=mutant.what, file=mutant.path,
                             caught=caught, failed_tests=failed, returncode=rc,
                             seconds=round(seconds, 1), date=time.strftime("%Y-%m-%d")))
            print(f"{mutant.name:30s} {'caught' if caught else 'SURVIVED':9s} "
                  f"{seconds:6.0f} s  {failed[0] if failed else ''}", flush=True)
            shutil.rmtree(tree)
    caught = sum(row["caught"] for row in rows)
    print(f"\n{caught} of {len(rows)} mutants caught")
    _merge_into(pathlib.Path(args.json), rows)
    return 0 if caught == len(rows) else 1


def _merge_into(path: pathlib.Path, rows: list[dict]) -> None:
    """Updates the JSON's rows of the mutants run now and keeps the others (each row has
    its date), in MUTANTS order; mutants no longer defined are dropped."""
    old = json.loads(path.read_text())["mutants"] if path.exists() else []
    by_name = {row["mutant"]: row for row in old} | {row["mutant"]: row for row in rows}
    merged = [by_name[m.name] for m in MUTANTS if m.name in by_name]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"caught": sum(r["caught"] for r in merged),
                                "of": len(merged), "mutants": merged}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
