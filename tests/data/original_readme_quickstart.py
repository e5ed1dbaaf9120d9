import torch
import asyncio
from vllm import SamplingParams
from chatspace.generation.vllm_steer_model import (
    VLLMSteerModel,
    VLLMSteeringConfig,
)

async def main():
    # Initialize model
    cfg = VLLMSteeringConfig(
        model_name="Qwen/Qwen3-0.6B",
        tensor_parallel_size=1,
        gpu_memory_utilization=0.9,
        max_model_len=2048,
    )
    model = VLLMSteerModel(cfg, bootstrap_layers=(2, 4, 6))

    # Generate baseline
    sampling = SamplingParams(temperature=0.0, max_tokens=64)
    baseline = await model.generate(
        "Question: What is the capital of France? Answer:",
        sampling
    )
    print("Baseline:", baseline[0])

    # Apply steering vector to layer 4
    steering_vector = torch.randn(model.hidden_size) * 100.0
    await model.set_layer_vector(4, steering_vector)

    # Generate with steering
    steered = await model.generate(
        "Question: What is the capital of France? Answer:",
        sampling
    )
    print("Steered:", steered[0])

    # Clear steering
    await model.clear_all_vectors()

    # (the README's "Activation Capture" section, unchanged)
    # Capture activations from layers 2, 4, 6
    results, handles = await model.generate(
        ["What is 2+2?", "What is the capital of France?"],
        sampling,
        capture_layers=[2, 4, 6],
    )

    # Fetch captures (batched fetch is more efficient)
    await model.fetch_captures_batch(handles)

    # Access captures for each request
    for i, handle in enumerate(handles):
        print(f"\nPrompt {i}: {results[i]}")

        for layer_idx in handle.layer_indices:
            # Each layer has a list (one per TP worker)
            captures = handle.captures[layer_idx]
            hidden = captures[0]["hidden"]  # [seq_len, hidden_size]
            print(f"  Layer {layer_idx}: {hidden.shape}")

if __name__ == "__main__":
    asyncio.run(main())
