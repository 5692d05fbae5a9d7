"""Writes docs_qa.jsonl, feedback_qa.jsonl and heldout.json from the Q&A table below.

The facts come from the product's README and API reference. Each record is
{"prompt": "Q: <question>\nA:", "completion": " <answer>"}; the query endpoint sends prompts
verbatim, so the demo asks questions in the same "Q: ...\nA:" form.
Run: python demo/make_dataset.py (the outputs are committed; rerun after editing the table).
"""

import json
from pathlib import Path

HERE = Path(__file__).parent

# (question, answer, split) — split: "train" (docs_v1), "feedback" (feedback_v1),
# "heldout" (never trained on: reworded questions whose facts are in the training set).
QA = [
    ("Which port does the LoRA REST API listen on by default?", "Port 8080.", "train"),
    ("Which port does the binary wire protocol use?", "Port 18765.", "train"),
    ("Which port serves OpenTelemetry and Prometheus metrics?", "Port 4318.", "train"),
    ("What is the base path of every API endpoint?", "/api/v1/llm/.", "train"),
    ("How do I authenticate to the LoRA API?", "Send a JWT in the header Authorization: Bearer <token>.", "train"),
    ("Which endpoint registers a base model?", "POST /api/v1/llm/models.", "train"),
    ("Which endpoint lists registered models?", "GET /api/v1/llm/models.", "train"),
    ("Which endpoint deletes a model?", "DELETE /api/v1/llm/models/{model_id}.", "train"),
    ("What status code does model registration return?", "201 Created.", "train"),
    ("What status code does deleting a model return?", "204 No Content.", "train"),
    ("Which endpoint creates a LoRA adapter?", "POST /api/v1/llm/lora/adapters.", "train"),
    ("What version does a new adapter start at?", "v1.0.", "train"),
    ("What status does a new adapter have right after creation?", "training.", "train"),
    ("How do I add training data to an existing adapter?", "PUT /api/v1/llm/lora/adapters/{adapter_id} with additional_training_data.", "train"),
    ("What version does the first update of an adapter create?", "v1.1.", "train"),
    ("How do I delete only one version of an adapter?", "DELETE the adapter with ?version=, for example ?version=v1.0.", "train"),
    ("How do I load an adapter into memory?", "POST /api/v1/llm/lora/adapters/{adapter_id}/load.", "train"),
    ("How do I unload an adapter from memory?", "POST /api/v1/llm/lora/adapters/{adapter_id}/unload.", "train"),
    ("Which endpoint shows whether an adapter is loaded?", "GET /api/v1/llm/lora/adapters/{adapter_id}/status.", "train"),
    ("Which endpoint runs inference through an adapter?", "POST /api/v1/llm/lora/query.", "train"),
    ("Which endpoint returns framework statistics?", "GET /api/v1/llm/lora/stats.", "train"),
    ("Which endpoint checks the health of the framework?", "GET /api/v1/llm/lora/health.", "train"),
    ("What does the health endpoint check?", "storage, manager and training.", "train"),
    ("What is the default page size of list endpoints?", "10 results.", "train"),
    ("What is the maximum page size of list endpoints?", "100 results.", "train"),
    ("What is the default pagination offset?", "0.", "train"),
    ("What is the default rate limit?", "1000 requests per hour per token.", "train"),
    ("Which header tells how many requests remain?", "X-RateLimit-Remaining.", "train"),
    ("Which header gives the rate limit ceiling?", "X-RateLimit-Limit.", "train"),
    ("Which header says when the rate limit window resets?", "X-RateLimit-Reset.", "train"),
    ("What status code means the rate limit was exceeded?", "429, with a Retry-After header.", "train"),
    ("What status code does a missing token get?", "401 Unauthorized.", "train"),
    ("What status code does an unknown adapter get?", "404 Not Found.", "train"),
    ("What status code does invalid JSON get?", "400 Bad Request.", "train"),
    ("What status code does a failed health check get?", "503 Service Unavailable.", "train"),
    ("Which format do error responses use?", "application/problem+json with error, details and status.", "train"),
    ("Which headers mark a deprecated endpoint?", "Deprecated: true and Sunset.", "train"),
    ("How is the API versioned?", "By URL path, /api/v1/.", "train"),
    ("Which file format do base models use?", "GGUF.", "train"),
    ("Which default base model does the local stack use?", "Gemma 3 270M in Q4_K_M.", "train"),
    ("What does the adapter field rank control?", "The LoRA rank r of the low-rank matrices.", "train"),
    ("What is the default LoRA rank?", "8.", "train"),
    ("What is the default LoRA alpha?", "16.", "train"),
    ("Which modules does training adapt by default?", "q_proj, k_proj, v_proj and o_proj.", "train"),
    ("Which library trains the adapters?", "PEFT on PyTorch.", "train"),
    ("Which library serves queries?", "llama.cpp through llama-cpp-python.", "train"),
    ("In which format are adapters served?", "As GGUF LoRA adapters.", "train"),
    ("How are training jobs delivered to the worker?", "Over an SQS queue.", "train"),
    ("Where are adapter files stored?", "In S3 under an immutable prefix per version.", "train"),
    ("Where is adapter metadata stored?", "In DynamoDB.", "train"),
    ("What does the status ready mean?", "The version's files are verified and queries use it.", "train"),
    ("What does the status stored mean?", "A verified version superseded by a newer ready one.", "train"),
    ("What does the status failed mean?", "Training failed; the reason is in details.", "train"),
    ("Which metrics does a trained adapter report?", "training_loss and validation_accuracy.", "train"),
    ("How do I upload a training dataset?", "POST JSONL to /api/v1/llm/datasets?dataset_id=<id>.", "train"),
    ("Which dataset record formats are accepted?", "prompt/completion, chat messages, or instruction/input/output.", "train"),
    ("What happens when a dataset has a bad line?", "Nothing is stored and the error names the line number.", "train"),
    ("How do I follow a training job?", "GET /api/v1/llm/lora/jobs/{job_id}.", "train"),
    ("Which field in a query request names the adapter?", "adapter_id.", "train"),
    ("Which query field limits the length of the answer?", "max_tokens.", "train"),
    ("What does a query response contain?", "response, tokens_used, inference_time_ms and audit_id.", "train"),
    ("Why should a query include user_id?", "For the audit trail.", "train"),
    ("How do I start the local stack?", "make serve.", "train"),
    ("How do I get a local token?", "export TOKEN=$(make -s token).", "train"),
    ("How do I run the demo?", "make demo.", "train"),
    ("How do I run the tests?", "make test.", "train"),
    ("How do I deploy to AWS?", "sam build, then sam deploy --guided.", "train"),
    ("What emulates AWS in the local stack?", "A moto server for DynamoDB, S3 and SQS.", "train"),
    ("Which scope do model registration and deletion need?", "lora:admin.", "feedback"),
    ("Which scope do read requests need?", "lora:read.", "feedback"),
    ("Which scope does creating an adapter need?", "lora:write.", "feedback"),
    ("What does a query for an adapter that is still training return?", "409 Conflict.", "feedback"),
    ("Can a ready adapter version be changed?", "No, versions are immutable once ready.", "feedback"),
    ("What happens to v1.0 when v1.1 becomes ready?", "v1.0 becomes stored.", "feedback"),
    # Held out: reworded questions about facts that are only in the training data.
    ("On which port does the REST API run?", "Port 8080.", "heldout"),
    ("What is the largest limit a list request accepts?", "100 results.", "heldout"),
    ("How many requests per hour does a token get by default?", "1000 requests per hour per token.", "heldout"),
    ("Which endpoint do I call to run a query with an adapter?", "POST /api/v1/llm/lora/query.", "heldout"),
]


def record(question: str, answer: str) -> dict:
    return {"prompt": f"Q: {question}\nA:", "completion": f" {answer}"}


def main() -> None:
    for split, name in (("train", "docs_qa.jsonl"), ("feedback", "feedback_qa.jsonl")):
        lines = [json.dumps(record(q, a)) for q, a, s in QA if s == split]
        (HERE / name).write_text("\n".join(lines) + "\n")
    heldout = [{"question": q, "answer": a} for q, a, s in QA if s == "heldout"]
    (HERE / "heldout.json").write_text(json.dumps(heldout, indent=2) + "\n")


if __name__ == "__main__":
    main()
