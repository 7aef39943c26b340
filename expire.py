import anthropic, time, datetime
U="http://127.0.0.1:19012"
c = anthropic.Anthropic(base_url=U, api_key="tok-abc")
b = c.messages.batches.create(requests=[{"custom_id":f"e{i}","params":{"model":"claude-haiku-4.5","max_tokens":5,"messages":[{"role":"user","content":f"x{i}"}]}} for i in range(20)])
print("created", b.created_at, "expires", b.expires_at)
t=time.time()
while True:
    b = c.messages.batches.retrieve(b.id)
    if b.processing_status=="ended": break
    time.sleep(0.5)
print("ended after", round(time.time()-t,1), b.request_counts, "ended_at", b.ended_at, "cancel_initiated", b.cancel_initiated_at)
import collections
print(collections.Counter(l.result.type for l in c.messages.batches.results(b.id)))
